package builtin

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
)

// recorder is a slog handler that keeps every record's message and
// attributes as text.
type recorder struct {
	mu    *sync.Mutex
	lines *[]string
	attrs string
}

func newRecorder() *recorder { return &recorder{mu: &sync.Mutex{}, lines: new([]string)} }

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	b.WriteString(r.attrs)
	rec.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	r.mu.Lock()
	defer r.mu.Unlock()
	*r.lines = append(*r.lines, b.String())
	return nil
}
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	n := *r
	for _, a := range as {
		n.attrs += " " + a.String()
	}
	return &n
}
func (r *recorder) WithGroup(string) slog.Handler { return r }

func (r *recorder) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range *r.lines {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

func (r *recorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(*r.lines, "\n")
}

func TestAccessRule(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	a1, a2, b := newEngine(t, "alpha"), newEngine(t, "alpha"), newEngine(t, "beta")
	rec := newRecorder()
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: newAuth(a1, a2, b), Log: slog.New(rec)})
	c := dial(t, p, ts.url, a1)
	ctx := testCtx(t)

	own := names.ReplyQueue("alpha", a1.id)
	for _, tc := range []struct {
		op    string
		queue string
		kind  connector.QueueKind
		ok    bool
	}{
		{"declare", own, connector.Private, true},
		{"declare", own, connector.Shared, false},
		{"declare", names.ReplyQueue("alpha", a2.id), connector.Private, false},
		{"declare", names.ReplyQueue("beta", a1.id), connector.Private, false},
		{"declare", names.WorkQueue("alpha"), connector.Shared, true}, // as on a broker: it exists already
		{"declare", names.RequestQueue("alpha"), connector.Shared, true},
		{"declare", names.WorkQueue("alpha"), connector.Private, false},
		{"declare", names.RequestQueue("beta"), connector.Shared, false},
		{"declare", "contract.1.2", connector.Shared, false},
		{"publish", names.RequestQueue("alpha"), 0, true},
		{"publish", names.ResultQueue("alpha"), 0, true},
		{"publish", names.WorkQueue("alpha"), 0, false},
		{"publish", own, 0, false},
		{"publish", names.ReplyQueue("alpha", a2.id), 0, false},
		{"publish", names.RequestQueue("beta"), 0, false},
		{"publish", names.ResultQueue("beta"), 0, false},
		{"publish", "sallyport.alpha.requests.x", 0, false},
		{"publish", "sallyport.alpha.requests\x00\n", 0, false},
		{"publish", "anything", 0, false},
		{"consume", names.WorkQueue("alpha"), 0, true},
		{"consume", own, 0, true},
		{"consume", names.ReplyQueue("alpha", a2.id), 0, false},
		{"consume", names.WorkQueue("beta"), 0, false},
		{"consume", names.ReplyQueue("beta", b.id), 0, false},
		{"consume", names.RequestQueue("alpha"), 0, false},
		{"consume", names.ResultQueue("alpha"), 0, false},
	} {
		t.Run(tc.op+" "+tc.queue, func(t *testing.T) {
			var err error
			switch tc.op {
			case "declare":
				err = c.Declare(ctx, tc.queue, tc.kind)
			case "publish":
				err = c.Publish(ctx, tc.queue, []byte("x"), time.Minute)
				if err == nil {
					if got := m.Depth(tc.queue); got != 1 {
						t.Fatalf("depth %d after an allowed publish", got)
					}
				} else if m.Depth(tc.queue) != 0 {
					t.Fatal("a refused publish reached the queue")
				}
			case "consume":
				// An allowed consumer runs until its context ends; a
				// refused one returns at once.
				cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				err = c.Consume(cctx, tc.queue, 1, func(context.Context, connector.Delivery) {})
				cancel()
			}
			switch {
			case tc.ok && err != nil:
				t.Fatalf("refused: %v", err)
			case !tc.ok && !errors.Is(err, connector.ErrForbidden):
				t.Fatalf("got %v, want ErrForbidden", err)
			}
		})
	}
	// The session survived every refusal, which was logged once, with the
	// queue name quoted.
	if err := c.Publish(ctx, names.RequestQueue("alpha"), []byte("still here"), time.Minute); err != nil {
		t.Fatalf("publish after refusals: %v", err)
	}
	if n := rec.count("queue refused"); n != 1 {
		t.Fatalf("%d refusals logged, want 1:\n%s", n, rec.all())
	}
	if strings.Contains(rec.all(), "\x00") {
		t.Fatal("a raw queue name reached the log")
	}
	if ts.Sessions() != 1 {
		t.Fatalf("%d sessions, want 1", ts.Sessions())
	}
}

func TestGrantAllows(t *testing.T) {
	// The rule as a pure function, beyond what the wire can carry.
	g := grant{engineID: "0123456789abcdef", site: "alpha"}
	for _, tc := range []struct {
		o     op
		queue string
		kind  connector.QueueKind
		want  bool
	}{
		{opConsume, "sallyport.alpha.work", 0, true},
		{opConsume, "sallyport.alpha.reply.0123456789abcdef", 0, true},
		{opConsume, "sallyport.alpha.reply.0123456789ABCDEF", 0, false},
		{opConsume, "sallyport.Alpha.work", 0, false},
		{opConsume, "sallyport.alpha.work.", 0, false},
		{opDeclare, "sallyport.alpha.reply.0123456789abcdef", connector.Private, true},
		{opDeclare, "sallyport.alpha.reply.0123456789abcdef", connector.Shared, false},
		{opDeclare, "sallyport.alpha.reply.1123456789abcdef", connector.Private, false},
		{opDeclare, "sallyport.alpha.work", connector.Shared, true},
		{opDeclare, "sallyport.alpha.work", connector.Private, false},
		{opDeclare, "sallyport.beta.work", connector.Shared, false},
		{opPublish, "sallyport.alpha.requests", 0, true},
		{opPublish, "sallyport.alpha.results", 0, true},
		{opAck, "sallyport.alpha.results", 0, false},
		{opPublish, "", 0, false},
	} {
		if got := g.allows(tc.o, tc.queue, tc.kind); got != tc.want {
			t.Errorf("%v %q: %v, want %v", tc.o, tc.queue, got, tc.want)
		}
	}
}
