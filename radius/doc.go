// Package radius is Sallyport's RADIUS client: it authenticates gateway users
// against FreeRADIUS, NPS or any RFC 2865 server, including multi-factor
// logins that use Access-Challenge (a password, then a one-time code).
//
// Packets are encoded with layeh.com/radius, but this package adds what
// layeh leaves out and what a gateway cannot do without:
//
//   - Every Access-Request carries a Message-Authenticator (RFC 3579 §3.2,
//     RFC 2869 §5.14) as its first attribute.
//   - Every reply must carry a valid Response Authenticator AND a valid
//     Message-Authenticator. A reply that lacks either, or fails either
//     check, is dropped and logged; the client keeps waiting for a genuine
//     reply until its timeout. A forged reply therefore can never turn into
//     an accept, nor into a reject that would end a login early.
//
// Message-Authenticator is mandatory because the Response Authenticator alone
// is an MD5 prefix construction: the BlastRADIUS attack (CVE-2024-3596) lets
// an on-path attacker forge an Access-Accept from an Access-Reject with a
// chosen-prefix MD5 collision. The HMAC-MD5 in Message-Authenticator covers
// the whole packet and is not open to that attack.
//
// The client speaks RADIUS over UDP, or, when Config.TLS is set, RadSec:
// RADIUS over TLS (RFC 6614, usually TCP port 2083). RadSec keeps one TLS
// connection per server, opened on first use and shared by concurrent
// logins, which are told apart by their RADIUS Identifier (at most 256
// outstanding per connection). The server's certificate is always verified,
// TLS 1.2 is the minimum, and the checks above apply unchanged: TLS protects
// the path to the server, the authenticators still prove that a reply
// answers this request under this secret. There is no retransmission over
// TLS; a server that does not answer within Config.Timeout is failed over
// and held down as over UDP. A connection the server closes (FreeRADIUS
// closes idle ones after idle_timeout) is opened again when next needed.
// Client.Close closes the connections.
//
// The package does not import the SSH gateway; it declares the few types its
// Authenticator needs (Login, Prompt, Asker, Identity) and the gateway
// adapts them.
package radius
