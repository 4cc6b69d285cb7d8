package ssh

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLimiter(3, 10*time.Second, 4, func() time.Time { return now })
	for i := 0; i < 3; i++ {
		if !l.allow("a") {
			t.Fatalf("attempt %d refused before burst spent", i)
		}
		l.fail("a")
	}
	if l.allow("a") {
		t.Fatal("allowed after burst spent")
	}
	if !l.allow("b") {
		t.Fatal("another key was limited")
	}
	now = now.Add(10 * time.Second)
	if !l.allow("a") {
		t.Fatal("token did not come back")
	}
	l.fail("a")
	if l.allow("a") {
		t.Fatal("allowed with no token")
	}

	// Fill the table with keys still penalised; new keys share the overflow bucket.
	for i := 0; i < 10; i++ {
		k := fmt.Sprint("k", i)
		for j := 0; j < 3; j++ {
			l.fail(k)
		}
	}
	if len(l.bucket) > 5 {
		t.Fatalf("table grew to %d entries, max 4 plus overflow", len(l.bucket))
	}
	if l.allow("fresh") {
		t.Fatal("a flood of new keys must fail closed once the table is full")
	}
	// After everything refills, sweeping frees room again.
	now = now.Add(time.Hour)
	l.fail("later")
	if _, ok := l.bucket["later"]; !ok {
		t.Fatal("full buckets were not swept")
	}
}
