package vault

import (
	"context"
	"errors"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/workitem"
)

// loginRequest answers a KindLoginRequest: a local user's password or
// one-time code, checked here so that engines never hold password hashes
// or TOTP seeds. The gateway audits the login itself.
func (v *Vault) loginRequest(ctx context.Context, conn connector.Connector, r *request, body []byte) {
	req, err := workitem.DecodeLoginRequest(body)
	if err != nil {
		v.reject(r.h.Site, r.h.Kind.String(), rejectBody, r.count, r.where...)
		return
	}
	defer req.Wipe()
	if req.ReplyTo != replyQueue(r.h) {
		v.reject(r.h.Site, r.h.Kind.String(), rejectReplyTo, r.count, r.where...)
		return
	}
	reply := &workitem.LoginReply{}
	switch req.Op {
	case workitem.LoginPassword:
		totp, groups, err := v.VerifyPassword(ctx, req.User, req.Secret)
		switch {
		case errors.Is(err, ErrDenied):
			reply.Refused = workitem.RefusedDenied
		case err != nil:
			v.log.Error("login check failed", "user", logSafe(req.User), "err", err)
			reply.Refused = workitem.RefusedUnavailable
		default:
			reply.TOTP, reply.Groups = totp, groups
		}
	case workitem.LoginTOTP:
		switch err := v.VerifyTOTP(ctx, req.User, string(req.Secret)); {
		case errors.Is(err, ErrDenied):
			reply.Refused = workitem.RefusedDenied
		case err != nil:
			v.log.Error("one-time code check failed", "user", logSafe(req.User), "err", err)
			reply.Refused = workitem.RefusedUnavailable
		}
	default:
		reply.Refused = workitem.RefusedDenied
	}
	out, err := workitem.EncodeLoginReply(reply)
	if err != nil {
		v.log.Error("login reply: encode", "err", err)
		return
	}
	v.reply(ctx, conn, r, workitem.KindLoginReply, out)
}
