//go:build tools

// Package tools pins the upstream helm command built by build.sh.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
