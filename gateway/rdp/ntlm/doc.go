// Package ntlm is NTLMv2 (MS-NLMP) as CredSSP uses it, on both legs of the
// RDP gateway: as a server toward the RDP client, verifying an
// AUTHENTICATE_MESSAGE against a secret looked up by user and domain (the
// one-time token the user typed as a password), and as a client toward the
// target, logging in with the vault's password.
//
// What it does:
//
//   - The three messages (NEGOTIATE, CHALLENGE, AUTHENTICATE) with strict,
//     bounded parsers (ParseNegotiate, ParseChallenge, ParseAuthenticate):
//     every offset and length is checked against the message, a message is
//     at most MaxMessageSize bytes, every field has a cap, names are UTF-16
//     that must decode cleanly, AV_PAIR lists must be terminated and hold no
//     duplicate or misshapen pair. Their Marshal methods encode them.
//   - Server: one exchange (Challenge, then Authenticate). It offers only
//     NTLMv2 with extended session security, 128-bit keys, key exchange,
//     signing and sealing, sends MsvAvTimestamp so clients add a MIC, and
//     accepts an AUTHENTICATE only if the NTProofStr matches (compared in
//     constant time), the MIC matches whenever MsvAvFlags says one is
//     present, the client's timestamp is within MaxClockSkew of the server's
//     clock and, if the server was given channel bindings, the client's
//     MsvAvChannelBindings match them.
//   - Client: one exchange (Negotiate, then Authenticate) producing an
//     NTLMv2 response with MsvAvFlags, a MIC, MsvAvChannelBindings and a
//     random exported session key sent under key exchange.
//   - Session: the session security of MS-NLMP 3.4 with extended session
//     security: Seal/Unseal as CredSSP wraps messages (the 16-byte signature
//     followed by the RC4-sealed message), Sign/Verify, each direction with
//     its own keys and sequence numbers.
//
// What it refuses, and why:
//
//   - NTLMv1 and LM responses (a 24-byte NT response, an LM response
//     without an NT response): both are crackable from a captured exchange.
//     The LMv2 response a client may send beside its NTLMv2 response is
//     ignored; only the NTLMv2 response is checked.
//   - Anonymous authentication (the anonymous flag, an empty user name or
//     an empty NT response): the gateway must know who logs in.
//   - Any exchange without extended session security, 128-bit keys, key
//     exchange, signing and sealing: CredSSP needs confidentiality, and the
//     weaker session security variants (NTLMv1 signing, 40- and 56-bit RC4)
//     are not implemented. Non-Unicode (OEM) messages and connectionless
//     (datagram) NTLM are not implemented either.
//   - Empty passwords, on both sides.
//
// Kerberos and SPNEGO are outside this package: CredSSP carries raw NTLM
// tokens. Unknown AV pairs (MsvAvSingleHost, for example) are carried but
// not interpreted.
//
// Secrets: passwords are []byte owned by the caller, who wipes them; this
// package never turns one into a string, wipes the copies it makes (the
// UTF-16 form, the NT hash, NTOWFv2, the session keys), and computes
// HMAC-MD5, MD5 and MD4 so that no key or sealed plaintext stays in the hash
// states it allocates. Errors never carry a password, a token or a key, nor
// the user-supplied names. Client and Session keep their keys out of fmt,
// slog and encoding/json.
package ntlm
