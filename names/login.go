package names

import (
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxLoginLen bounds the login name a client may present.
const MaxLoginLen = 256

var errBadLogin = errors.New("malformed login name")

// ParseLogin splits an SSH login name into the gateway user and the secret
// (target) name.
//
// The rule: the secret name is everything after the LAST '@'; the user is
// everything before it. Secret names never contain '@', so user names may:
//
//	alice@web01                  user "alice",              secret "web01"
//	alice@corp.example@web01     user "alice@corp.example", secret "web01"
//	alice                        user "alice",              no secret (menu)
//	alice@corp.example@          user "alice@corp.example", no secret (menu)
//
// A user whose own name contains '@' asks for the menu with a trailing '@',
// because `alice@corp.example` alone would name the secret "corp.example".
// Control characters, whitespace, invalid UTF-8 and over-long names are
// refused.
func ParseLogin(login string) (user, secret string, err error) {
	if login == "" || len(login) > MaxLoginLen || !utf8.ValidString(login) {
		return "", "", errBadLogin
	}
	for _, r := range login {
		if unicode.IsControl(r) || unicode.IsSpace(r) || r == utf8.RuneError {
			return "", "", errBadLogin
		}
	}
	i := strings.LastIndexByte(login, '@')
	if i < 0 {
		return login, "", nil
	}
	user, secret = login[:i], login[i+1:]
	if user == "" {
		return "", "", errBadLogin
	}
	return user, secret, nil
}
