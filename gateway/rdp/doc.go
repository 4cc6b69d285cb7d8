// Package rdp is Sallyport's RDP proxy. A Windows administrator first
// logs in to the SSH gateway with MFA and asks for a token
// (`ssh -p 2222 alice@rdp:win01@gateway` prints `RDP token: ...`), then
// points a stock RDP client (mstsc, FreeRDP, Remmina) at the gateway as
// `alice@win01` with the token as the password. The token is good once,
// for a short time, from the address that asked for it.
//
// The client must use NLA: the gateway is the CredSSP server, and the
// token is checked by the client's NTLMv2 proof, bound to the gateway's
// TLS key, before any target is contacted. Then, while the client still
// waits for the CredSSP answer (so that a refusal reaches it as a logon
// error it reports), the gateway consumes the token, checks the
// credential out of the vault, connects to the target over TLS, checks
// the target's certificate against the SHA-256 pinned in the vault (or
// pins it on first use) and logs in: as the CredSSP client with the
// vault's password when the target wants NLA, or by putting the password
// in the Client Info PDU (autologon) when it only has TLS. Standard RDP
// Security, RDSTLS and anything else the gateway cannot secure is refused
// with a negotiation failure the client understands.
//
// Of the connection sequence the gateway parses and rewrites only what
// injection needs — the X.224 negotiation, the protocol echoed in the MCS
// Connect Initial and Response, and the Client Info PDU (account,
// password, autologon, no auto-reconnect cookie) — and then relays
// bytes, fast-path included. Every read before the relay is bounded in
// size and time.
//
// Credentials come through CredentialSource, the engine's client for
// the vault, so the proxy never imports the vault.
package rdp
