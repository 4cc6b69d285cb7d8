package admit

import (
	"cmp"
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
)

// Bounds on one Tally interval: sources counted one by one (the rest are
// summed), and lines written per flush for the busiest of them (then one
// summary line for all the others).
const (
	tallySources = 256
	tallyLines   = 8
)

// Tally counts refusals per source and reason between flushes, and writes
// them as at most tallyLines+1 log lines per flush, however many refusals
// there were. It is how a flood gets reported without flooding the log.
type Tally struct {
	log   *slog.Logger
	msg   string
	attrs []slog.Attr

	mu     sync.Mutex
	counts map[netip.Prefix]map[string]int
	others map[string]int // sources beyond tallySources, summed
	extra  int            // how many such sources' refusals were summed
}

// NewTally returns a tally that logs msg (with attrs) at warn level.
func NewTally(log *slog.Logger, msg string, attrs ...slog.Attr) *Tally {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Tally{log: log, msg: msg, attrs: attrs, counts: map[netip.Prefix]map[string]int{}, others: map[string]int{}}
}

// Add counts one refusal of src for reason. Reasons must come from a small
// fixed set of constants, never from client input.
func (t *Tally) Add(src netip.Prefix, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m, ok := t.counts[src]
	if !ok {
		if len(t.counts) >= tallySources {
			t.others[reason]++
			t.extra++
			return
		}
		m = map[string]int{}
		t.counts[src] = m
	}
	m[reason]++
}

type tallyRow struct {
	src    netip.Prefix
	counts map[string]int
	total  int
}

// Flush writes what was counted since the last flush and starts over.
func (t *Tally) Flush() {
	t.mu.Lock()
	counts, others, extra := t.counts, t.others, t.extra
	t.counts, t.others, t.extra = map[netip.Prefix]map[string]int{}, map[string]int{}, 0
	t.mu.Unlock()
	if len(counts) == 0 {
		return
	}
	rows := make([]tallyRow, 0, len(counts))
	for src, m := range counts {
		r := tallyRow{src: src, counts: m}
		for _, n := range m {
			r.total += n
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b tallyRow) int {
		if c := cmp.Compare(b.total, a.total); c != 0 {
			return c
		}
		return a.src.Addr().Compare(b.src.Addr())
	})
	top := rows[:min(len(rows), tallyLines)]
	for _, r := range top {
		t.write(r.counts, slog.String("source", sourceString(r.src)))
	}
	rest := rows[len(top):]
	if len(rest) == 0 && extra == 0 {
		return
	}
	for _, r := range rest {
		for k, n := range r.counts {
			others[k] += n
		}
	}
	more := []slog.Attr{slog.String("source", "others"), slog.Int("sources", len(rest))}
	if extra > 0 {
		// Refusals from sources past the table's bound: counted, not told apart.
		more = append(more, slog.Int("untracked_refusals", extra))
	}
	t.write(others, more...)
}

func (t *Tally) write(counts map[string]int, who ...slog.Attr) {
	attrs := append(slices.Clone(t.attrs), who...)
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		attrs = append(attrs, slog.Int(k, counts[k]))
	}
	t.log.LogAttrs(context.Background(), slog.LevelWarn, t.msg, attrs...)
}

// sourceString prints a source as its address when it is a single host.
func sourceString(p netip.Prefix) string {
	if !p.IsValid() {
		return "unknown"
	}
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}
