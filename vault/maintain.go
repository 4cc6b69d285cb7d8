package vault

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// maintainBatch bounds the tasks sent per scheduler round.
const maintainBatch = 64

// maintain runs the heartbeat and rotation scheduler until the daemon
// stops: every round it sends what is due to each secret's site.
func (d *Daemon) maintain() {
	every := d.cfg.MaintainEvery
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		for d.ctx.Err() == nil {
			n, err := d.sendTasks(d.ctx)
			if err != nil {
				d.log.Warn("maintenance scheduler", "err", err)
				break
			}
			if n < maintainBatch {
				break
			}
		}
	}
}

// sendTasks sends one batch of due tasks and returns how many it picked.
func (d *Daemon) sendTasks(ctx context.Context) (int, error) {
	out, err := d.vault.NextTasks(ctx, maintainBatch)
	if err != nil {
		return 0, err
	}
	for _, o := range out {
		if err := d.sendTask(ctx, o); err != nil {
			// Recorded as sent: the scheduler finds out what became of it
			// (resend after the window, or verify).
			d.log.Warn("maintenance task not sent; it is retried after its window", "site", o.Site,
				"secret", o.Task.Secret, "op", string(o.Task.Op), "err", err)
		}
		o.Task.Wipe()
	}
	return len(out), nil
}

func (d *Daemon) sendTask(ctx context.Context, o Outgoing) error {
	d.sitesMu.Lock()
	s := d.sites[o.Site]
	d.sitesMu.Unlock()
	if s == nil {
		return errSiteNotServed
	}
	key, version, err := d.vault.SiteKey(ctx, o.Site)
	if err != nil {
		return err
	}
	defer clear(key)
	body, err := workitem.EncodeTask(o.Task)
	if err != nil {
		return err
	}
	defer clear(body)
	sealed, err := workitem.Seal(key, workitem.Header{Site: o.Site, ID: o.ID, Kind: workitem.KindTask,
		KeyVersion: uint32(version), Expiry: o.Expiry}, body) // #nosec G115 -- small counters
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.conn.Declare(pctx, names.WorkQueue(o.Site), connector.Shared); err != nil {
		return err
	}
	return s.conn.Publish(pctx, names.WorkQueue(o.Site), sealed, o.TTL)
}

type vaultError string

func (e vaultError) Error() string { return string(e) }

const errSiteNotServed = vaultError("the site is not served")

// taskResult applies a task result from an engine of site; retry says
// the store was busy and the result should come again.
func (d *Daemon) taskResult(ctx context.Context, site string, h workitem.Header, body []byte, count ItemCounter) (retry bool) {
	v := d.vault
	kind := h.Kind.String()
	res, err := workitem.DecodeTaskResult(body)
	if err != nil {
		v.reject(site, kind, rejectBody, count)
		return false
	}
	if err := v.TaskResult(ctx, site, h.Engine, res); err != nil {
		if busy(err) {
			v.log.Info("task result not applied yet: the store is busy; it comes again", slog.String("site", site),
				slog.String("secret", logSafe(res.Secret)))
			return true
		}
		v.log.Warn("task result not applied", slog.String("site", site), slog.String("engine", h.Engine),
			slog.String("secret", logSafe(res.Secret)), slog.Any("err", err))
		v.reject(site, kind, "not_applied", count)
		return false
	}
	if count != nil {
		count(site, kind, "ok")
	}
	d.tasks.WithLabelValues(site, string(res.Op), res.Current).Inc()
	return false
}

// busy reports whether err is SQLite saying the database was locked by
// another writer past the busy timeout: a passing condition.
func busy(err error) bool {
	var e interface{ Code() int }
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code() & 0xff {
	case 5, 6: // SQLITE_BUSY, SQLITE_LOCKED
		return true
	}
	return false
}
