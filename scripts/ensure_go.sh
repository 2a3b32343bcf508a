#!/usr/bin/env bash
# Go stubs (`make generate`) and the Go client's test need Debian's Go
# toolchain, its protoc plugins and the Go sources of gRPC and protobuf (in
# /usr/share/gocode; Go's module proxy is not used). Install them when absent:
# CI runs as root on a fresh Debian.
set -euo pipefail
# golang-protobuf 1.5 (not the 1.3 that gRPC pulls in): its codec handles the
# APIv2 messages protoc-gen-go writes.
PACKAGES=(golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev
    golang-github-golang-protobuf-1-5-dev)
if command -v go > /dev/null && command -v protoc-gen-go > /dev/null \
    && command -v protoc-gen-go-grpc > /dev/null && [ -d /usr/share/gocode/src/google.golang.org/grpc ] \
    && [ ! -e /usr/share/gocode/src/github.com/golang/protobuf/proto/table_unmarshal.go ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "Go is not installed; run as root: apt-get install -y ${PACKAGES[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" > /dev/null
