package hsm

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"net"
	"testing"

	gossh "golang.org/x/crypto/ssh"
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

// BenchmarkSSHHandshake runs whole SSH handshakes (curve25519 key exchange,
// the server signing the exchange hash with its host key) between an
// x/crypto/ssh client and server over in-memory pipes, with the host key in
// each provider: the gateway's cost per connection for its host key.
func BenchmarkSSHHandshake(b *testing.B) {
	for _, tp := range testProviders {
		for _, parallel := range []bool{false, true} {
			name := tp.name
			if parallel {
				name += "/parallel"
			}
			b.Run(name, func(b *testing.B) {
				signer, err := gossh.NewSignerFromSigner(benchSigner(b, tp.open(b)))
				if err != nil {
					b.Fatal(err)
				}
				srv := &gossh.ServerConfig{NoClientAuth: true}
				srv.KeyExchanges = []string{gossh.KeyExchangeCurve25519}
				srv.AddHostKey(signer)
				cli := &gossh.ClientConfig{
					User:            "bench",
					HostKeyCallback: gossh.FixedHostKey(signer.PublicKey()),
					Config:          gossh.Config{KeyExchanges: []string{gossh.KeyExchangeCurve25519}},
				}
				// Loopback TCP: net.Pipe is unbuffered, and both sides
				// send their version line before reading.
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				one := func() error {
					c, err := net.Dial("tcp", ln.Addr().String())
					if err != nil {
						return err
					}
					a, err := ln.Accept()
					if err != nil {
						_ = c.Close()
						return err
					}
					done := make(chan error, 1)
					go func() {
						sc, chans, reqs, err := gossh.NewServerConn(a, srv)
						if err == nil {
							go gossh.DiscardRequests(reqs)
							go func() {
								for ch := range chans {
									_ = ch.Reject(gossh.Prohibited, "")
								}
							}()
							err = sc.Wait()
						}
						done <- err
					}()
					cc, _, _, err := gossh.NewClientConn(c, "bench", cli)
					if err != nil {
						_ = a.Close()
						<-done
						return err
					}
					_ = cc.Close()
					<-done
					return nil
				}
				b.ResetTimer()
				if parallel {
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := one(); err != nil {
								b.Error(err)
								return
							}
						}
					})
				} else {
					for i := 0; i < b.N; i++ {
						if err := one(); err != nil {
							b.Fatal(err)
						}
					}
				}
				reportRate(b, "handshakes/s")
			})
		}
	}
}
