package hsm

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"testing"
)

// The benchmarks run against every test provider (the soft keystore and,
// with cgo, SoftHSM2) and report operations per second:
//
//	go test -run '^$' -bench . ./hsm/

func benchSigner(b *testing.B, p Provider) crypto.Signer {
	b.Helper()
	ctx := context.Background()
	if err := p.GenerateSigner(ctx, LabelSSHHostKey); err != nil {
		b.Fatal(err)
	}
	s, err := p.Signer(ctx, LabelSSHHostKey)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchKEK(b *testing.B, p Provider) {
	b.Helper()
	if err := p.GenerateAESKey(context.Background(), LabelKEK); err != nil {
		b.Fatal(err)
	}
}

func reportRate(b *testing.B, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, unit)
	}
}

func BenchmarkSign(b *testing.B) {
	for _, tp := range testProviders {
		b.Run(tp.name, func(b *testing.B) {
			s := benchSigner(b, tp.open(b))
			d := sha256.Sum256([]byte("benchmark"))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, "signs/s")
		})
	}
}

func BenchmarkSignParallel(b *testing.B) {
	for _, tp := range testProviders {
		b.Run(tp.name, func(b *testing.B) {
			s := benchSigner(b, tp.open(b))
			d := sha256.Sum256([]byte("benchmark"))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRate(b, "signs/s")
		})
	}
}

// A data key is 32 bytes; its aad names the record it protects.
var (
	benchDataKey = make([]byte, 32)
	benchAAD     = []byte("secret/12345/v1")
)

func BenchmarkSeal(b *testing.B) {
	for _, tp := range testProviders {
		b.Run(tp.name, func(b *testing.B) {
			p := tp.open(b)
			benchKEK(b, p)
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := p.Seal(ctx, LabelKEK, benchDataKey, benchAAD); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, "seals/s")
		})
	}
}

func BenchmarkSealParallel(b *testing.B) {
	for _, tp := range testProviders {
		b.Run(tp.name, func(b *testing.B) {
			p := tp.open(b)
			benchKEK(b, p)
			ctx := context.Background()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := p.Seal(ctx, LabelKEK, benchDataKey, benchAAD); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRate(b, "seals/s")
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	for _, tp := range testProviders {
		b.Run(tp.name, func(b *testing.B) {
			p := tp.open(b)
			benchKEK(b, p)
			ctx := context.Background()
			sealed, err := p.Seal(ctx, LabelKEK, benchDataKey, benchAAD)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := p.Open(ctx, LabelKEK, sealed, benchAAD); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, "opens/s")
		})
	}
}
