package radius

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/names"
)

// GatewayAuth authenticates the SSH gateway's users against RADIUS servers: the
// password goes in the first Access-Request, and every Access-Challenge
// (a one-time code, a push confirmation) becomes one more
// keyboard-interactive prompt with echo off.
type GatewayAuth struct {
	RADIUS *Authenticator
	Log    *slog.Logger
}

// Authenticate implements gw.Authenticator. A refusal wraps ErrDenied; no
// server answering wraps ErrUnavailable.
func (a GatewayAuth) Authenticate(ctx context.Context, login gw.Login, ask gw.Asker) (gw.Identity, error) {
	relay := func(ctx context.Context, instruction string, ps []Prompt) ([]string, error) {
		prompts := make([]gw.Prompt, len(ps))
		for i, p := range ps {
			prompts[i] = gw.Prompt{Text: promptText(p.Text), Echo: p.Echo}
		}
		return ask(ctx, instruction, prompts)
	}
	id, err := a.RADIUS.Authenticate(ctx, Login{User: login.User, Source: login.Source, Password: login.Password}, relay)
	switch {
	case err == nil:
	case errors.Is(err, ErrUnavailable):
		return gw.Identity{}, fmt.Errorf("%w: %w", gw.ErrUnavailable, err)
	default:
		return gw.Identity{}, fmt.Errorf("%w: radius: %w", gw.ErrDenied, err)
	}
	if len(id.Groups) > names.MaxGroups {
		if a.Log != nil {
			a.Log.Warn("radius accept carried too many groups; keeping the first ones",
				"user", login.User, "groups", len(id.Groups), "kept", names.MaxGroups)
		}
		id.Groups = id.Groups[:names.MaxGroups]
	}
	return gw.Identity{User: login.User, Groups: id.Groups}, nil
}

// promptText makes a challenge's Reply-Message read as a prompt: servers
// send "Enter your one-time code" or "Code:", and the answer should not
// be typed against the last letter.
func promptText(s string) string {
	t := strings.TrimRight(s, " \t")
	switch {
	case t == "":
		return s
	case strings.HasSuffix(t, "\n"):
		return s
	case strings.HasSuffix(t, ":"), strings.HasSuffix(t, "?"), strings.HasSuffix(t, ">"):
		return t + " "
	default:
		return t + ": "
	}
}

// Metrics returns a function for Config.Observe that records
// every RADIUS request, by server and outcome, in the histogram
// sallyport_radius_request_duration_seconds registered with reg.
func Metrics(reg prometheus.Registerer) func(server, result string, d time.Duration) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sallyport_radius_request_duration_seconds",
		Help:    "RADIUS requests by server and outcome (accept, reject, challenge, no_answer, canceled, error), and how long each server took.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"server", "result"})
	reg.MustRegister(h)
	return func(server, result string, d time.Duration) {
		h.WithLabelValues(server, result).Observe(d.Seconds())
	}
}
