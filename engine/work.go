package engine

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// Version is reported in pongs.
var Version = "dev"

// workPrefetch is how many work items an engine takes at once (each a
// ping, or a heartbeat or change that waits on a target); the other
// engines of the site take the rest. Changes are further limited by the
// task runner.
const workPrefetch = 32

// pongTTL is how long a pong stays valid.
const pongTTL = time.Minute

// worker takes the site's work (sealed under the site key) and sends the
// results (sealed under the engine's key).
type worker struct {
	conn   connector.Connector
	site   string
	engine string
	creds  *Credentials // holds the engine key
	log    *slog.Logger
	now    func() time.Time
	count  func(kind, outcome string)
	// refresh, if set, fetches the site keys again (bounded) when an
	// item names a newer key version than this engine has.
	refresh func(ctx context.Context)
	replays *workitem.ReplayCache
	tasks   *taskRunner

	mu       sync.RWMutex
	siteKeys map[int][]byte
}

func newWorker(conn connector.Connector, site, engine string, creds *Credentials, log *slog.Logger, now func() time.Time) *worker {
	return &worker{conn: conn, site: site, engine: engine, creds: creds, log: log, now: now,
		replays: workitem.NewReplayCache(1<<16, now), siteKeys: map[int][]byte{},
		tasks: newTaskRunner(DefaultMaxChanges, DefaultHostChanges)}
}

// setSiteKeys replaces the site keys (copies are kept).
func (w *worker) setSiteKeys(keys map[int][]byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range w.siteKeys {
		clear(k)
	}
	w.siteKeys = map[int][]byte{}
	for v, k := range keys {
		w.siteKeys[v] = append([]byte(nil), k...)
	}
}

func (w *worker) close() { w.setSiteKeys(nil) }

// newestKey is the newest site key version the worker has (0: none).
func (w *worker) newestKey() uint32 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	newest := 0
	for v := range w.siteKeys {
		newest = max(newest, v)
	}
	return uint32(newest) // #nosec G115 -- versions are small counters
}

func (w *worker) siteKey(version uint32) []byte {
	w.mu.RLock()
	defer w.mu.RUnlock()
	k, ok := w.siteKeys[int(version)]
	if !ok {
		return nil
	}
	return append([]byte(nil), k...)
}

// Run takes work until ctx ends.
func (w *worker) Run(ctx context.Context) error {
	queue := names.WorkQueue(w.site)
	if err := w.conn.Declare(ctx, queue, connector.Shared); err != nil {
		return err
	}
	return w.conn.Consume(ctx, queue, workPrefetch, w.handle)
}

func (w *worker) drop(kind, reason string, attrs ...any) {
	if w.count != nil {
		w.count(kind, reason)
	}
	w.log.Warn("work item dropped", append([]any{"reason", reason}, attrs...)...)
}

func (w *worker) handle(ctx context.Context, d connector.Delivery) {
	sealed := d.Body()
	peek, err := workitem.Peek(sealed)
	if err != nil {
		w.drop("unknown", "malformed")
		_ = d.Ack()
		return
	}
	if peek.Site != w.site || !peek.Kind.SiteKeyed() {
		w.drop(peek.Kind.String(), "unexpected", "site", peek.Site)
		_ = d.Ack()
		return
	}
	key := w.siteKey(peek.KeyVersion)
	if key == nil && w.refresh != nil && peek.KeyVersion > w.newestKey() {
		w.refresh(ctx)
		key = w.siteKey(peek.KeyVersion)
	}
	if key == nil {
		// A key this engine does not have (yet): another engine of the
		// site, or this one after its next pull, may.
		w.drop(peek.Kind.String(), "stale_key", "key_version", peek.KeyVersion)
		_ = d.Reject(!d.Redelivered())
		return
	}
	defer clear(key)
	h, body, err := workitem.Open(key, sealed, w.now())
	if err != nil {
		reason := "failed_authentication"
		if errors.Is(err, workitem.ErrExpired) {
			reason = "expired"
		}
		w.drop(peek.Kind.String(), reason, "item", peek.ID)
		_ = d.Ack()
		return
	}
	defer clear(body)
	if !w.replays.Take(h.ID, h.Expiry) {
		w.drop(h.Kind.String(), "replayed", "item", h.ID, "redelivered", d.Redelivered())
		_ = d.Ack()
		return
	}
	switch h.Kind {
	case workitem.KindPing:
		if err := w.pong(ctx, h, body); err != nil {
			w.log.Warn("pong not sent; the ping goes back for another engine", "err", err)
			_ = d.Reject(true)
			return
		}
	case workitem.KindTask:
		if err := w.task(ctx, h, body); err != nil {
			w.drop(h.Kind.String(), "not_run", "item", h.ID, "err", err)
			_ = d.Ack()
			return
		}
	default:
		w.drop(h.Kind.String(), "unexpected_kind")
	}
	if w.count != nil {
		w.count(h.Kind.String(), "ok")
	}
	_ = d.Ack()
}

// pong answers a ping on the site's result queue.
func (w *worker) pong(ctx context.Context, h workitem.Header, body []byte) error {
	var p workitem.Ping
	if err := workitem.DecodeJSON(body, &p); err != nil {
		return err
	}
	out, err := json.Marshal(workitem.Pong{PingID: h.ID, Received: w.now().UnixNano(), Version: Version})
	if err != nil {
		return err
	}
	k := w.creds.currentKey()
	defer clear(k.Bytes)
	sealed, err := workitem.Seal(k.Bytes, workitem.Header{
		Site: w.site, ID: workitem.NewID(), Kind: workitem.KindPong, Engine: w.engine,
		KeyVersion: uint32(k.Version), Expiry: w.now().Add(pongTTL), // #nosec G115 -- versions are small counters
	}, out)
	if err != nil {
		return err
	}
	return w.conn.Publish(ctx, names.ResultQueue(w.site), sealed, pongTTL)
}
