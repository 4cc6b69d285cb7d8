package amqp_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log"
	"os"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/connector/amqp"
	"github.com/sallyport/sallyport/names"
)

// An engine connects over TLS with its site's credentials, the password
// read from a file and the broker's CA pinned, declares its reply queue
// and sends a request.
func Example() {
	pw, err := os.ReadFile("/etc/sallyport/amqp.password")
	if err != nil {
		log.Fatal(err)
	}
	defer clear(pw)
	caPEM, err := os.ReadFile("/etc/sallyport/broker-ca.pem")
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)

	ctx := context.Background()
	conn, err := amqp.Dial(ctx, amqp.Config{
		URL:      "amqps://site-berlin@broker.example:5671/sallyport",
		Password: bytes.TrimSpace(pw),
		TLS:      &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	reply := names.ReplyQueue("berlin", "0123456789abcdef")
	if err := conn.Declare(ctx, reply, connector.Private); err != nil {
		log.Fatal(err)
	}
	if err := conn.Publish(ctx, names.RequestQueue("berlin"), []byte("sealed item"), time.Minute); err != nil {
		log.Fatal(err)
	}
}
