// Package engine is the runtime of a Sallyport engine: the process at a
// site that runs the gateways and does the vault's work there.
//
// An engine owns an identity key pair (in its HSM when it has one). It
// registers with the vault's callback API, pinning the vault's
// certificate, and waits until an administrator approves it. From then on
// it pulls its configuration at an interval: its own key and its site's
// keys, wrapped to its public key, and how to reach its site's connector.
// It reaches the vault only through that connector and the callback API,
// dialing out; nothing dials in to a site but users to its gateways. Even
// inside `sallyport dev` the engine talks to the vault this way.
package engine
