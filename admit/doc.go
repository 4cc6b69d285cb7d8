// Package admit holds the door of every listener Sallyport exposes: it
// decides which connections, and which login attempts, get any of the
// process's time before someone has proved who they are.
//
// A Listener wraps a net.Listener. Each source (an IPv4 address, or an IPv6
// /64 by default) may hold only a few connections that have not yet
// authenticated, may open new ones only at a bounded rate, and the total is
// capped. Near the cap, new connections from sources that already hold one
// are dropped early, at random, with a probability that rises to certainty
// at the cap; at the cap, a newcomer from a source holding fewer
// connections evicts the oldest connection of the source holding the most,
// preferring one still in its machine phase (banner and key exchange) over
// one where a person may be typing a password. A flood from one address,
// or from a few, therefore never starves a user at another address.
// Refusals are counted per source and written as a bounded number of log
// lines per interval (Tally), so a flood cannot flood the log either.
//
// Logins is the failed-login limiter shared by the gateways. It keeps three
// budgets in fixed-size tables keyed by salted hashes, so its memory does
// not depend on what clients send: per (user, source) a hard budget, per
// source a budget whose exhaustion only slows that source down, and per
// user a budget whose exhaustion refuses only sources the user has never
// logged in from. Guessing from one address cannot lock out the other
// people behind it, and guessing from anywhere cannot lock a user out of
// the places they really log in from. SECURITY.md gives the numbers.
package admit
