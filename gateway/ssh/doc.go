// Package ssh is Sallyport's SSH proxy. A person connects with a stock
// OpenSSH client as `ssh -p 2222 USER@SECRET@gateway`, proves who they are
// (keyboard-interactive: password, then any further prompts such as a TOTP
// code or a RADIUS challenge), and is put through to the target that SECRET
// names, logged in as the target's privileged account with a password or key
// the person never sees.
//
// The proxy never trusts a target blindly: the target's host key must match
// the key pinned in the vault (or is pinned on first use where the secret
// allows it), and a mismatch ends the session with a clear message.
//
// What the proxy relays is an allow-list: sessions with pty-req, env
// (LANG and LC_* only), shell, exec, the sftp subsystem, window-change,
// signal and break, and exit-status/exit-signal back. Agent and X11
// forwarding, port forwarding and every other channel type are refused.
//
// Users and credentials come through two small interfaces declared here,
// Authenticator and CredentialSource, so the proxy never imports the vault:
// in `sallyport dev` they are served in-process; at a remote site, over the
// site's queue.
package ssh
