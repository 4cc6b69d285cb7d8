package names

import "testing"

func TestQueues(t *testing.T) {
	const eng = "0123456789abcdef"
	for _, tc := range []struct {
		q                  string
		site, kind, engine string
		ok                 bool
	}{
		{RequestQueue("dc-east"), "dc-east", QueueRequests, "", true},
		{WorkQueue("dc-east"), "dc-east", QueueWork, "", true},
		{ResultQueue("a.b"), "", "", "", false}, // '.' in a site name never splits right
		{ReplyQueue("dc-east", eng), "dc-east", QueueReply, eng, true},
		{ReplyQueue("dc-east", "NOTHEX0123456789"), "", "", "", false},
		{"sallyport.dc-east.other", "", "", "", false},
		{"sallyport.-x.work", "", "", "", false},
		{"other.dc-east.work", "", "", "", false},
		{"sallyport.dc-east.reply.", "", "", "", false},
	} {
		site, kind, engine, ok := ParseQueue(tc.q)
		if ok != tc.ok || site != tc.site || kind != tc.kind || engine != tc.engine {
			t.Errorf("ParseQueue(%q) = %q %q %q %v", tc.q, site, kind, engine, ok)
		}
	}
}

func FuzzParseQueue(f *testing.F) {
	f.Add("sallyport.dc1.reply.0123456789abcdef")
	f.Add("sallyport.dc1.work")
	f.Fuzz(func(t *testing.T, q string) {
		site, kind, engine, ok := ParseQueue(q)
		if !ok {
			return
		}
		var back string
		switch kind {
		case QueueReply:
			back = ReplyQueue(site, engine)
		default:
			back = QueuePrefix(site) + kind
		}
		if back != q {
			t.Fatalf("ParseQueue(%q) does not round-trip: %q", q, back)
		}
	})
}
