package ntlm

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

// The example of MS-NLMP 4.2.4 (NTLMv2 authentication), with the common
// values of 4.2.1.
var (
	specUser            = "User"
	specDomain          = "Domain"
	specPassword        = "Password"
	specServerChallenge = unhex("0123456789abcdef")
	specClientChallenge = unhex("aaaaaaaaaaaaaaaa")
	specRandomKey       = bytes.Repeat([]byte{0x55}, 16)
	specTargetInfo      = AVList{
		{ID: AVNbDomainName, Value: encodeName("Domain")},
		{ID: AVNbComputerName, Value: encodeName("Server")},
	}
	// 4.2.4.3: the CHALLENGE_MESSAGE.
	specChallenge = unhex("4e544c4d53535000020000000c000c003800000033828ae2" +
		"0123456789abcdef00000000000000002400240044000000" +
		"060070170000000f53006500720076006500720002000c00" +
		"44006f006d00610069006e0001000c005300650072007600" +
		"6500720000000000")

	specNTOWFv2     = unhex("0c868a403bfd7a93a3001ef22ef02e3f")     // 4.2.4.1.1
	specBaseKey     = unhex("8de40ccadbc14a82f15cb0ad0de95ca3")     // 4.2.4.1.2
	specLMv2        = unhex("86c35097ac9cec102554764a57cccc19")     // 4.2.4.2.1, before the client challenge
	specNTProofStr  = unhex("68cd0ab851e51c96aabc927bebef6a1c")     // 4.2.4.2.2
	specEncryptedRK = unhex("c5dad2544fc9799094ce1ce90bc9d03e")     // 4.2.4.2.3
	specSealKey     = unhex("59f600973cc4960a25480a7c196e4c58")     // 4.2.4.4, client to server
	specSignKey     = unhex("4788dc861b4782f35d43fd98fe1a2d39")     // 4.2.4.4, client to server
	specSealed      = unhex("54e50165bf1936dc996020c1811b0f06fb5f") // 4.2.4.4: "Plaintext", sealed
	specSignature   = unhex("010000007fb38ec5c55d497600000000")     // 4.2.4.4
)

func unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TestKnownAnswers checks every intermediate value of MS-NLMP 4.2.4.
func TestKnownAnswers(t *testing.T) {
	key, err := ntowfv2([]byte(specPassword), specUser, specDomain)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, got, want []byte) {
		t.Helper()
		if !bytes.Equal(got, want) {
			t.Errorf("%s = %x, want %x", what, got, want)
		}
	}
	check("NTOWFv2", key[:], specNTOWFv2)
	// Time is zero in the example.
	blob, err := ntv2Blob(0, specClientChallenge, specTargetInfo)
	if err != nil {
		t.Fatal(err)
	}
	proof := hmacMD5(key[:], specServerChallenge, blob)
	check("NTProofStr", proof[:], specNTProofStr)
	base := hmacMD5(key[:], proof[:])
	check("SessionBaseKey", base[:], specBaseKey)
	lm := hmacMD5(key[:], specServerChallenge, specClientChallenge)
	check("LMv2 response", lm[:], specLMv2)
	enc := rc4Once(base[:], specRandomKey)
	check("EncryptedRandomSessionKey", enc[:], specEncryptedRK)
	seal := md5Sum(specRandomKey, clientSealMagic)
	check("client sealing key", seal[:], specSealKey)

	var rk [16]byte
	copy(rk[:], specRandomKey)
	s := newSession(&rk, true)
	check("client signing key", s.sendSign[:], specSignKey)
	out, err := s.Seal(encodeName("Plaintext"))
	if err != nil {
		t.Fatal(err)
	}
	check("signature", out[:SignatureSize], specSignature)
	check("sealed", out[SignatureSize:], specSealed)
}

// TestParseSpecChallenge parses the CHALLENGE_MESSAGE of 4.2.4.3 and
// encodes it back to the same bytes.
func TestParseSpecChallenge(t *testing.T) {
	m, err := ParseChallenge(specChallenge)
	if err != nil {
		t.Fatal(err)
	}
	if m.Flags != 0xe28a8233 || m.TargetName != "Server" || !bytes.Equal(m.ServerChallenge[:], specServerChallenge) {
		t.Fatalf("parsed %+v", m)
	}
	if m.Version != (Version{Major: 6, Minor: 0, Build: 6000, Revision: 15}) {
		t.Fatalf("version %+v", m.Version)
	}
	if len(m.TargetInfo) != 2 {
		t.Fatalf("target info %+v", m.TargetInfo)
	}
	for i, p := range specTargetInfo {
		if m.TargetInfo[i].ID != p.ID || !bytes.Equal(m.TargetInfo[i].Value, p.Value) {
			t.Fatalf("target info pair %d: %+v, want %+v", i, m.TargetInfo[i], p)
		}
	}
	again, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, specChallenge) {
		t.Fatalf("re-encoded as\n%x\nwant\n%x", again, specChallenge)
	}
}

// TestServerAcceptsSpecExample gives the Server the AUTHENTICATE_MESSAGE of
// the example (no MIC: the example's CHALLENGE has no timestamp) and
// unseals the example's sealed message with the session it returns.
func TestServerAcceptsSpecExample(t *testing.T) {
	// The example's Time is 0: the server's clock is at 1601-01-01.
	epoch := fromFiletime(0)
	srv := NewServer("Server", bytes.NewReader(specServerChallenge), func() time.Time { return epoch })
	cli, err := NewClient(specUser, specDomain, []byte(specPassword), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Challenge(cli.Negotiate()); err != nil {
		t.Fatal(err)
	}
	blob, err := ntv2Blob(0, specClientChallenge, specTargetInfo)
	if err != nil {
		t.Fatal(err)
	}
	m := &Authenticate{
		Flags:                     0xe28a8233,
		LMResponse:                append(append([]byte(nil), specLMv2...), specClientChallenge...),
		NTResponse:                append(append([]byte(nil), specNTProofStr...), blob...),
		Domain:                    specDomain,
		User:                      specUser,
		Workstation:               "COMPUTER",
		EncryptedRandomSessionKey: specEncryptedRK,
		Version:                   Version{Major: 5, Minor: 1, Build: 2600, Revision: 15},
	}
	msg, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	sess, err := srv.Authenticate(msg, func(user, domain string) ([]byte, bool) {
		return []byte(specPassword), user == specUser && domain == specDomain
	})
	if err != nil {
		t.Fatal(err)
	}
	if sess.User != specUser || sess.Domain != specDomain || sess.Workstation != "COMPUTER" {
		t.Fatalf("session for %q %q %q", sess.Domain, sess.User, sess.Workstation)
	}
	k, err := sess.ExportedSessionKey()
	if err != nil || !bytes.Equal(k, specRandomKey) {
		t.Fatalf("exported session key %x, %v", k, err)
	}
	pt, err := sess.Unseal(append(append([]byte(nil), specSignature...), specSealed...))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pt, encodeName("Plaintext")) {
		t.Fatalf("unsealed %q", pt)
	}
	if !strings.Contains(sess.String(), `Domain\User`) {
		t.Fatalf("String() = %q", sess.String())
	}
}
