//! The `docker` backend: one container per server through testcontainers.
//!
//! The image comes from `CUTOVER_TEST_PG_IMAGE` (default: the official
//! `postgres:15`). Where no registry is reachable, `tests/docker/build-image.sh`
//! builds a compatible image from the installed binaries; testcontainers only
//! pulls when the image is missing locally, so a locally built tag is used as is.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

use crate::binaries::run_checked;

/// The official image of the PostgreSQL major version whose pg_dump is installed
/// (pg_dump must not be older than the server).
pub(crate) const DEFAULT_IMAGE: &str = "postgres:15";
const READY: &str = "database system is ready to accept connections";

pub(crate) struct DockerServer {
    container: Container<GenericImage>,
}

impl DockerServer {
    pub(crate) fn start(user: &str, password: &str, database: &str) -> Result<DockerServer> {
        let image = std::env::var("CUTOVER_TEST_PG_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
        let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
        // A fixed host port: a stopped and restarted container keeps it (an
        // ephemeral mapping would change, and the servers' URLs with it).
        let host_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let container = GenericImage::new(name, tag)
            .with_exposed_port(5432.tcp())
            // The official image's init server logs "ready" on stdout first;
            // the real server logs it on stderr.
            .with_wait_for(WaitFor::message_on_stderr(READY))
            .with_env_var("POSTGRES_USER", user)
            .with_env_var("POSTGRES_PASSWORD", password)
            .with_env_var("POSTGRES_DB", database)
            .with_cmd([
                "-c",
                "wal_level=logical",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
            ])
            .with_mapped_port(host_port, 5432.tcp())
            .with_startup_timeout(Duration::from_secs(120))
            .start()
            .with_context(|| {
                format!(
                    "failed to start a container from {image}; without a registry, build it first with \
                     tests/docker/build-image.sh and set CUTOVER_TEST_PG_IMAGE to its tag"
                )
            })?;
        Ok(DockerServer { container })
    }

    pub(crate) fn id(&self) -> &str {
        self.container.id()
    }

    /// The host port mapped to 5432 (fixed for the container's life).
    pub(crate) fn port(&self) -> Result<u16> {
        Ok(self.container.get_host_port_ipv4(5432.tcp())?)
    }

    pub(crate) fn stop(&self) -> Result<()> {
        self.container.stop()?;
        Ok(())
    }

    pub(crate) fn kill(&self) -> Result<()> {
        docker(&["kill", "--signal", "KILL", self.id()])
    }

    pub(crate) fn start_again(&self) -> Result<()> {
        if !self.container.is_running()? {
            self.container.start()?;
        }
        Ok(())
    }

    pub(crate) fn pause(&self) -> Result<()> {
        docker(&["pause", self.id()])
    }

    pub(crate) fn unpause(&self) -> Result<()> {
        docker(&["unpause", self.id()])
    }

    /// Cuts the container off the network its published port goes through.
    pub(crate) fn disconnect_network(&self) -> Result<()> {
        docker(&["network", "disconnect", "bridge", self.id()])
    }

    pub(crate) fn reconnect_network(&self) -> Result<()> {
        docker(&["network", "connect", "bridge", self.id()])
    }

    pub(crate) fn is_running(&self) -> bool {
        self.container.is_running().unwrap_or(false)
    }
}

fn docker(args: &[&str]) -> Result<()> {
    run_checked(Command::new("docker").args(args))?;
    Ok(())
}
