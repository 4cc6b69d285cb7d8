package workitem

import (
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json.
func TestRedacts(t *testing.T) {
	pw, key, login := redacttest.Secret(20), redacttest.Secret(40), redacttest.Secret(12)
	redacttest.Check(t, []redacttest.Case{
		{Name: "Credential password", Value: Credential{Secret: "web01", Host: "h", Port: 22, Username: "root", Password: pw}, Secret: pw},
		{Name: "Credential private key", Value: &Credential{Secret: "web01", Host: "h", Username: "root", PrivateKey: key}, Secret: key},
		{Name: "CredentialReply", Value: CredentialReply{Credential: &Credential{Username: "root", Password: pw}}, Secret: pw},
		{Name: "LoginRequest", Value: LoginRequest{Op: "password", User: "alice", Secret: login}, Secret: login},
		{Name: "Secret", Value: Secret{Password: pw}, Secret: pw},
		{Name: "Task", Value: Task{Op: TaskChange, Secret: "web01", Current: Secret{Password: pw},
			Candidates: []Secret{{PrivateKey: key}}, Privileged: &Secret{Password: login}}, Secret: key},
		{Name: "Task privileged", Value: &Task{Op: TaskChange, Privileged: &Secret{Password: login}}, Secret: login},
	})
}
