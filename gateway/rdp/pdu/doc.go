// Package pdu reads, checks and rewrites the few RDP protocol data units a
// credential-injecting gateway has to understand, following MS-RDPBCGR and
// the ITU-T recommendations it builds on (T.123, X.224/T.125 class 0, T.125
// MCS, T.124 GCC):
//
//   - framing: TPKT (T.123) and fast-path PDUs, told apart by their first
//     byte, so that a relay can forward whole PDUs (ReadTPKT, ReadPDU,
//     WriteTPKT);
//   - the X.224 Connection Request and Connection Confirm with the RDP
//     negotiation structures (ParseConnectionRequest,
//     ParseConnectionConfirm, NegotiationFailure) and the Data TPDU header;
//   - the MCS Connect Initial and Connect Response, parsed far enough to
//     find CS_CORE.serverSelectedProtocol and SC_CORE.clientRequestedProtocols
//     and to overwrite them in place (SetServerSelectedProtocol,
//     SetClientRequestedProtocols), and to list the client's channels;
//   - the Client Info PDU (ParseClientInfo, ClientInfo.Encode), whose
//     domain, user name and password are replaced, whose auto-reconnect
//     cookie is removed, and which is otherwise re-encoded byte for byte.
//
// Every parser takes a whole TPKT frame as ReadTPKT returns it, checks every
// length against the bytes it has before using it, caps what the
// specification caps, and returns an error wrapping ErrMalformed,
// ErrUnsupported, ErrTooLarge or ErrNotClientInfo rather than guessing.
// No error carries a password. Nothing here encrypts: the gateway only
// accepts TLS-based security (TLS, CredSSP), under which these PDUs travel
// without RDP's own encryption.
package pdu
