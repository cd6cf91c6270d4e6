// Minimal TCP relay: a goroutine pair per connection, io.Copy each way (on Linux the runtime
// splices TCP to TCP), half-close passed on with CloseWrite. Reference peer for bench/run.py.
//
// Usage: relay-go HOST PORT TARGET_HOST:TARGET_PORT   (PORT 0: any; prints "LISTENING <port>")
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

func pipe(dst, src *net.TCPConn, done chan<- struct{}) {
	io.Copy(dst, src)
	dst.CloseWrite()
	done <- struct{}{}
}

func handle(c *net.TCPConn, target string) {
	defer c.Close()
	o, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	out := o.(*net.TCPConn)
	defer out.Close()
	done := make(chan struct{}, 2)
	go pipe(out, c, done)
	go pipe(c, out, done)
	<-done
	<-done
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: relay-go HOST PORT TARGET")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(os.Args[1], os.Args[2]))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTENING %d\n", ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go handle(c.(*net.TCPConn), os.Args[3])
	}
}
