package pdu

import (
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json.
func TestRedacts(t *testing.T) {
	ascii := redacttest.Secret(16)
	// The ClientInfo holds the password in UTF-16LE: look for those bytes
	// (a leak of the raw field) and for the text (a leak of a decoding).
	wire := utf16Of(string(ascii))
	ci := func() ClientInfo {
		c, err := ParseClientInfo(clientInfoOf(infoSpec{flags: InfoUnicode, user: "alice", pass: string(ascii)}))
		if err != nil {
			t.Fatal(err)
		}
		return *c
	}
	redacttest.Check(t, []redacttest.Case{
		{Name: "ClientInfo password bytes", Value: ci(), Secret: wire},
		{Name: "ClientInfo password text", Value: ci(), Secret: ascii},
	})
}
