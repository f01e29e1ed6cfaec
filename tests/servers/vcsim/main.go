// vcsim for virtrigaud's tests: the vSphere API simulator of Debian's govmomi source
// (golang-github-vmware-govmomi-dev ships the simulator library but no command).
//
// It builds the default vCenter model (simulator.VPX: one datacenter DC0, a cluster
// and a standalone host, datastore LocalDS_0 -- a temporary local folder --, portgroups
// "VM Network" and DC0_DVPG0, two VMs per resource pool), serves it on -listen and
// prints one JSON line {"url": ..., "pid": ...} on stdout once it accepts requests.
// With a username the SOAP login checks the password (read from the environment
// variable named by -password-env, so it never shows in the process list). With -tls
// it speaks HTTPS, with -cert/-key using that certificate instead of Go's built-in
// test certificate. SIGTERM or SIGINT stop it and remove the datastore folders; with
// -exit-with-parent it also stops when the process that started it is gone (a test
// run killed with SIGKILL leaves no simulator behind).
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vcsim: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "host:port to serve on")
	username := flag.String("username", "", "login user (empty: any login is accepted)")
	passwordEnv := flag.String("password-env", "VCSIM_PASSWORD", "environment variable holding the password")
	useTLS := flag.Bool("tls", true, "serve HTTPS")
	certFile := flag.String("cert", "", "PEM certificate for HTTPS (default: Go's test certificate)")
	keyFile := flag.String("key", "", "PEM private key of -cert")
	datastores := flag.Int("datastores", 1, "datastores per datacenter")
	machines := flag.Int("machines", 2, "VMs per resource pool")
	withParent := flag.Bool("exit-with-parent", false, "stop when the parent process exits")
	flag.Parse()

	model := simulator.VPX()
	model.Datastore = *datastores
	model.Machine = *machines
	if err := model.Create(); err != nil {
		fail("creating the model: %v", err)
	}
	defer model.Remove()

	listenURL := &url.URL{Host: *listen}
	if *username != "" {
		listenURL.User = url.UserPassword(*username, os.Getenv(*passwordEnv))
	}
	model.Service.Listen = listenURL
	if *useTLS {
		config := new(tls.Config)
		if *certFile != "" {
			pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				fail("loading -cert/-key: %v", err)
			}
			config.Certificates = []tls.Certificate{pair}
		}
		model.Service.TLS = config
	}

	server := model.Service.NewServer()
	defer server.Close()

	served := *server.URL
	served.User = nil
	line, _ := json.Marshal(map[string]interface{}{"url": served.String(), "pid": os.Getpid()})
	fmt.Println(string(line))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if *withParent {
		parent := os.Getppid()
		go func() {
			for os.Getppid() == parent {
				time.Sleep(time.Second)
			}
			stop <- syscall.SIGTERM
		}()
	}
	<-stop
}
