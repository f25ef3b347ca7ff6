# vault-agent for the edgepop machine: renders each domain's Let's Encrypt certificate from Vault into the
# layout edgepop reads (edgepop.toml [tls]):
#
#   /var/lib/edgepop/certs/<domain>/chain.pem   leaf first, then intermediates
#   /var/lib/edgepop/certs/<domain>/key.pem     PKCS#8, PKCS#1 or SEC1 private key
#
# Installed at /etc/vault-agent/agent.hcl; process-compose runs `vault agent -config /etc/vault-agent/agent.hcl`
# once the tailnet is up (Vault lives at home, reached over Tailscale).
#
# There is deliberately NO `exec` block and NO `command` in the templates. nginx needed
# `command = "pkill -HUP nginx"` (through runas) to reload certificates; edgepop watches the certs directory
# itself, validates the chain/key pair and swaps it in atomically, keeping the previous certificate if the new
# pair is incomplete or mismatched (vault-agent writes the two files one after the other). A reload command would
# only race that watcher. `kill -HUP <edgepop pid>` still forces a rescan (and a configuration reload) by hand.
# tests/e2e/deploy.rs parses this file and fails if an exec block or a command appears.

vault {
  address = "https://vault.tailnet-name.ts.net:8200"
  retry {
    num_retries = 5
  }
}

auto_auth {
  method "approle" {
    mount_path = "auth/approle"
    config = {
      # Written at boot from Fly secrets (fly.toml [[files]]).
      role_id_file_path   = "/run/secrets/vault-role-id"
      secret_id_file_path = "/run/secrets/vault-secret-id"
      # Keep it: vault-agent re-authenticates with it after a restart of the process.
      remove_secret_id_file_after_reading = false
    }
  }
}

template_config {
  # The certificates are static KV secrets: re-read them every 10 minutes. Renewal happens outside this machine
  # (the ACME client writes the new pair to Vault); edgepop sees it within this interval plus its debounce.
  static_secret_render_interval = "10m"
  # Vault unreachable: keep retrying and keep the last rendered files; edgepop keeps serving them.
  exit_on_retry_failure = false
}

# One template per file per domain. KV v2 at secret/edgepop/certs/<domain>, fields `chain` and `key`.
# Add a domain: copy both stanzas, change the domain in the path and the destination, add it to a [[site]].

template {
  destination = "/var/lib/edgepop/certs/example.com/chain.pem"
  perms       = "0400"
  # edgepop drops to this user after binding (server.user) and rereads the pair on every rotation.
  user        = "edgepop"
  group       = "edgepop"
  contents    = <<EOT
{{ with secret "secret/data/edgepop/certs/example.com" }}{{ .Data.data.chain }}{{ end }}
EOT
  error_on_missing_key = true
}

template {
  destination = "/var/lib/edgepop/certs/example.com/key.pem"
  perms       = "0400"
  # edgepop drops to this user after binding (server.user) and rereads the pair on every rotation.
  user        = "edgepop"
  group       = "edgepop"
  contents    = <<EOT
{{ with secret "secret/data/edgepop/certs/example.com" }}{{ .Data.data.key }}{{ end }}
EOT
  error_on_missing_key = true
}
