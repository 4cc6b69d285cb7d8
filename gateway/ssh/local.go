package ssh

import (
	"context"
	"errors"
	"fmt"
)

// LocalAuth authenticates gateway users held in the vault: a password, then,
// for users enrolled in TOTP, a one-time code asked as a second
// keyboard-interactive prompt. It is the embedded default and the
// break-glass path when RADIUS is configured.
type LocalAuth struct {
	Users LocalUsers
}

// Authenticate implements Authenticator.
func (a LocalAuth) Authenticate(ctx context.Context, login Login, ask Asker) (Identity, error) {
	totp, groups, err := a.Users.VerifyPassword(ctx, login.User, login.Password)
	if errors.Is(err, ErrUnavailable) {
		return Identity{}, err // the vault did not answer: not the user's fault
	}
	if err != nil {
		return Identity{}, fmt.Errorf("%w: password: %v", ErrDenied, err)
	}
	if totp {
		answers, err := ask(ctx, "", []Prompt{{Text: "Verification code: ", Echo: false}})
		if err != nil {
			return Identity{}, fmt.Errorf("%w: totp prompt: %v", ErrDenied, err)
		}
		if len(answers) != 1 {
			return Identity{}, fmt.Errorf("%w: totp: %d answers", ErrDenied, len(answers))
		}
		if err := a.Users.VerifyTOTP(ctx, login.User, answers[0]); errors.Is(err, ErrUnavailable) {
			return Identity{}, err
		} else if err != nil {
			return Identity{}, fmt.Errorf("%w: totp: %v", ErrDenied, err)
		}
	}
	return Identity{User: login.User, Groups: groups, Local: true}, nil
}
