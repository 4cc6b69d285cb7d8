package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// returnMemory hands heap memory the process no longer uses back to the
// operating system once more than threshold bytes of it have piled up. A
// burst of logins leaves such a pile (argon2id takes 19 MiB per password
// check), and with GOGC=400 the runtime would keep it until a later
// collection lowers the heap goal, which on a quiet gateway can be minutes
// away. It checks every interval until ctx ends.
func returnMemory(ctx context.Context, every time.Duration, threshold uint64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 && sample[0].Value.Uint64() > threshold {
			debug.FreeOSMemory()
		}
	}
}
