# edgepop with Nix: the binary and two OCI images built with nix2container.
#
# From the repository root (Nix copies the git repository, tracked files only, and evaluates deploy/flake.nix
# inside it, so `./..` below is the workspace root):
#
#   nix build ./deploy#edgepop                   # result/bin/edgepop (same release profile as cargo build --release)
#   nix run   ./deploy#image.copyToDockerDaemon  # edgepop alone, same layout as deploy/Dockerfile
#   nix run   ./deploy#machine-image.copyTo -- docker://registry.fly.io/<app>:<tag>
#                                                # the Fly machine: process-compose + tailscaled + vault-agent + edgepop
#
# The first run writes deploy/flake.lock: commit it. See deploy/README.md.
{
  description = "edgepop: edge reverse proxy (binary and OCI images)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # The exact toolchain CI uses (workspace rust-version), whatever rustc nixpkgs ships today.
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    nix2container = {
      url = "github:nlewo/nix2container";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, rust-overlay, nix2container }:
    let
      lib = nixpkgs.lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems f;
      workspace = (lib.importTOML ../Cargo.toml).workspace.package;
    in
    {
      packages = forAllSystems (system:
        let
          pkgs = import nixpkgs {
            inherit system;
            overlays = [ rust-overlay.overlays.default ];
            # Vault is BSL-licensed, which nixpkgs counts as unfree; only the machine image uses it.
            config.allowUnfreePredicate = pkg: builtins.elem (lib.getName pkg) [ "vault" ];
          };
          n2c = nix2container.packages.${system}.nix2container;

          # rust-version = "1.95" in Cargo.toml -> rust-bin.stable."1.95.0".
          toolchain = pkgs.rust-bin.stable."${workspace.rust-version}.0".minimal;
          rustPlatform = pkgs.makeRustPlatform {
            cargo = toolchain;
            rustc = toolchain;
          };

          edgepop = rustPlatform.buildRustPackage {
            pname = "edgepop";
            version = workspace.version;

            # Only what cargo needs: a docs or deploy change does not rebuild the binary.
            src = lib.fileset.toSource {
              root = ./..;
              fileset = lib.fileset.unions [
                ../Cargo.toml
                ../Cargo.lock
                ../proxy
                ../cache
                ../certs
                ../resolver
                ../tests
                ../benches
              ];
            };
            cargoLock.lockFile = ../Cargo.lock;
            cargoBuildFlags = [ "--package" "edgepop" "--bin" "edgepop" ];

            # libz-ng-sys builds zlib-ng with CMake. cmake's setup hook would otherwise try to configure the
            # workspace root as a CMake project.
            nativeBuildInputs = [ pkgs.cmake ];
            dontUseCmakeConfigure = true;

            # The tests bind loopback sockets and run the binary; CI runs them (`cargo test`), not the sandbox.
            doCheck = false;

            meta = {
              description = "Edge reverse proxy on pingora: TLS, HTTP/2, caching, PROXY protocol, embedded DNS";
              license = lib.licenses.asl20;
              mainProgram = "edgepop";
            };
          };

          # The root filesystem of the edgepop-only image: the same paths as deploy/Dockerfile.
          edgepopRoot = pkgs.runCommand "edgepop-root" { } ''
            mkdir -p $out/usr/local/bin $out/etc/edgepop $out/etc/ssl/certs $out/var/lib/edgepop
            ln -s ${edgepop}/bin/edgepop $out/usr/local/bin/edgepop
            cp ${./edgepop.toml} $out/etc/edgepop/edgepop.toml
            ln -s ${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt $out/etc/ssl/certs/ca-certificates.crt
            printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
              > $out/etc/passwd
            printf 'root:x:0:\nnonroot:x:65532:\n' > $out/etc/group
          '';

          # The Fly machine's root filesystem: edgepopRoot's files plus process-compose, tailscale, vault, bash
          # (process-compose runs commands through it) and the two supervisor configurations.
          machineRoot = pkgs.runCommand "edgepop-machine-root" { } ''
            mkdir -p $out/bin $out/usr/local/bin $out/etc/edgepop $out/etc/process-compose $out/etc/vault-agent \
              $out/etc/ssl/certs $out/var/lib/edgepop $out/run $out/tmp
            for pkg in ${edgepop} ${pkgs.process-compose} ${pkgs.tailscale} ${pkgs.vault} \
                       ${pkgs.bashInteractive} ${pkgs.coreutils}; do
              ln -sf $pkg/bin/* $out/bin/
            done
            ln -s /bin/bash $out/bin/sh 2>/dev/null || true
            ln -s ${edgepop}/bin/edgepop $out/usr/local/bin/edgepop
            ln -s /run $out/var/run
            cp ${./edgepop.toml} $out/etc/edgepop/edgepop.toml
            cp ${./process-compose.yaml} $out/etc/process-compose/process-compose.yaml
            cp ${./vault-agent.hcl} $out/etc/vault-agent/agent.hcl
            ln -s ${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt $out/etc/ssl/certs/ca-certificates.crt
            printf 'root:x:0:0:root:/root:/bin/bash\n' > $out/etc/passwd
            printf 'root:x:0:\n' > $out/etc/group
          '';

          image = n2c.buildImage {
            name = "edgepop";
            copyToRoot = [ edgepopRoot ];
            config = {
              Entrypoint = [ "/usr/local/bin/edgepop" "run" "--config" "/etc/edgepop/edgepop.toml" ];
              User = "65532:65532";
              Env = [ "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" ];
              ExposedPorts = {
                "8443/tcp" = { };
                "8080/tcp" = { };
                "9901/tcp" = { };
              };
              StopSignal = "SIGTERM";
            };
          };

          # Runs as root: tailscaled needs the TUN device. process-compose forwards SIGTERM to every process in
          # reverse dependency order (ordered_shutdown), edgepop first. Its API listens on a unix socket, not on
          # TCP 8080 (edgepop's plain listener).
          machine-image = n2c.buildImage {
            name = "edgepop-machine";
            copyToRoot = [ machineRoot ];
            maxLayers = 8;
            config = {
              Entrypoint = [
                "/bin/process-compose" "up"
                "--config" "/etc/process-compose/process-compose.yaml"
                "--tui=false"
                "--ordered-shutdown"
                "--unix-socket" "/run/process-compose.sock"
              ];
              Env = [
                "PATH=/bin:/usr/local/bin"
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
              ];
              ExposedPorts = {
                "8443/tcp" = { };
                "8080/tcp" = { };
                "9901/tcp" = { };
              };
              StopSignal = "SIGTERM";
            };
          };
        in
        {
          inherit edgepop image machine-image;
          default = edgepop;
        });
    };
}
