// Package vault is Sallyport's control plane: it stores gateway users and
// target credentials, keeps each site's work-item key, answers credential
// requests that arrive over a site connector, and serves the admin HTTP API
// (with a matching Client for `sallyport ctl`).
//
// # Storage and keys
//
// Everything lives in one SQLite file (mode 0600, in a 0700 directory).
// Nothing in it decrypts without the key provider (package hsm):
//
//   - each secret has its own random 32-byte data key (DEK); the credential is
//     sealed with AES-256-GCM under the DEK, and the DEK is stored only wrapped
//     by the provider's key-encryption key (hsm.LabelKEK);
//   - the credential's additional data binds the secret's name, kind, host,
//     port, target user name and host key, so a credential cannot be moved to
//     another row, nor redirected to another host, by editing the database;
//   - TOTP seeds and site keys are sealed directly under the KEK.
//
// Plaintext keys and credentials are wiped (clear) as soon as they have
// been used.
//
// # Names
//
// Secret and site names are 1..64 characters of [A-Za-z0-9._-]; they never
// contain '@'. User names are 1..128 printable UTF-8 characters without
// whitespace, control or format characters, ',' or ':' and MAY contain '@'
// (UPNs such as alice@corp.example). The gateway splits a login at its LAST
// '@', so "alice@corp.example@web01" is user "alice@corp.example" asking for
// secret "web01"; because secret names never contain '@', that split is
// unambiguous. Group names are like user names but may also contain inner
// spaces ("Domain Admins"). All names compare exactly (case-sensitively).
// A new secret, site, user or group name may not start with '-', so that no
// name can be taken for a command-line flag; names stored before that rule
// can still be looked up and removed.
//
// An allow-list entry is either a user name, or "group:" followed by a group
// name.
//
// # Local users
//
// Passwords are hashed with argon2id (m=19456 KiB, t=2, p=1) and stored as
// PHC strings. Verification takes the same time for unknown users and wrong
// passwords, and the number of concurrent argon2id computations is bounded.
// TOTP (RFC 6238, SHA-1, 6 digits, 30 s) codes are single-use: a code is
// accepted only if its time step is later than the last one accepted for
// that user.
package vault
