//! S3 stores (`s3://bucket/prefix`), through the `object_store` crate: credentials and
//! region from the usual AWS environment, `AWS_ENDPOINT_URL` for S3-compatible servers,
//! the bucket created when missing (as the seed did). A run is first written to a local
//! spool folder and then uploaded, `metadata.json` last; if the store stays unreachable
//! after retries, the run stays in the spool until `meshload results push`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::{FsStore, RunRef, StoreError};

/// The environment variable naming the spool folder (default: `$XDG_STATE_HOME/meshload/spool`
/// or `~/.local/state/meshload/spool`).
pub const SPOOL_ENV: &str = "MESHLOAD_SPOOL";

/// An S3 bucket and prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    address: String,
    bucket: String,
    prefix: String,
    region: String,
    endpoint: Option<String>,
    store: Arc<AmazonS3>,
}

fn s3_error(address: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::S3 {
        address: address.to_string(),
        source: e.into(),
    }
}

impl S3Store {
    /// Opens `s3://bucket/prefix` (nothing is sent yet).
    pub fn open(address: &str) -> Result<S3Store, StoreError> {
        let rest = address
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::Unsupported(address.to_string()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Unsupported(address.to_string()));
        }
        let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok();
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".to_string());
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 4,
            retry_timeout: Duration::from_secs(10),
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&region)
            .with_retry(retry);
        if let Some(e) = &endpoint {
            builder = builder
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"));
        }
        let store = builder.build().map_err(|e| s3_error(address, e))?;
        Ok(S3Store {
            address: address.to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region,
            endpoint,
            store: Arc::new(store),
        })
    }

    /// The store's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The local spool of this store.
    pub fn spool(&self) -> FsStore {
        let base = std::env::var_os(SPOOL_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let state = std::env::var_os("XDG_STATE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        std::env::var_os("HOME")
                            .map_or_else(std::env::temp_dir, PathBuf::from)
                            .join(".local/state")
                    });
                state.join("meshload/spool")
            });
        FsStore {
            root: base.join(&self.bucket).join(&self.prefix),
        }
    }

    /// A local copy of this store's runs, for readers that serve them
    /// (`MESHLOAD_CACHE`, default `~/.cache/meshload/cache`, then bucket and prefix).
    pub fn cache(&self) -> FsStore {
        let base = std::env::var_os("MESHLOAD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        std::env::var_os("HOME")
                            .map_or_else(std::env::temp_dir, PathBuf::from)
                            .join(".cache")
                    })
                    .join("meshload/cache")
            });
        FsStore {
            root: base.join(&self.bucket).join(&self.prefix),
        }
    }

    /// Copies into `cache` every run it does not hold yet; returns how many. A run is
    /// staged first and moved into place whole, and one whose `metadata.json` (uploaded
    /// last) is not there yet is left for a later call, so a reader of the cache never
    /// sees half a run.
    pub async fn sync_into(&self, cache: &FsStore) -> Result<usize, StoreError> {
        let staging = FsStore {
            root: cache.root.join(".staging"),
        };
        let mut added = 0;
        for (test, id) in self.list_runs().await? {
            let target = cache.root.join(&test).join(&id);
            if target.join(crate::layout::METADATA).is_file() {
                continue;
            }
            let staged = self.download_run(&test, &id, &staging).await?;
            if !staged.join(crate::layout::METADATA).is_file() {
                let _ = std::fs::remove_dir_all(&staged);
                continue;
            }
            let parent = cache.root.join(&test);
            std::fs::create_dir_all(&parent).map_err(|e| StoreError::Io {
                path: parent.display().to_string(),
                source: e,
            })?;
            let _ = std::fs::remove_dir_all(&target);
            std::fs::rename(&staged, &target).map_err(|e| StoreError::Io {
                path: target.display().to_string(),
                source: e,
            })?;
            added += 1;
        }
        Ok(added)
    }

    fn key(&self, parts: &[&str]) -> ObjectPath {
        let mut all: Vec<&str> = Vec::new();
        if !self.prefix.is_empty() {
            all.push(&self.prefix);
        }
        all.extend_from_slice(parts);
        ObjectPath::from(all.join("/"))
    }

    /// Creates the bucket when it does not exist.
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
        let endpoint = self
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", self.region));
        let url = endpoint.parse().map_err(|e| s3_error(&self.address, e))?;
        let bucket = Bucket::new(
            url,
            UrlStyle::Path,
            self.bucket.clone(),
            self.region.clone(),
        )
        .map_err(|e| s3_error(&self.address, e))?;
        let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
        let credentials = match std::env::var("AWS_SESSION_TOKEN") {
            Ok(token) => Credentials::new_with_token(key, secret, token),
            Err(_) => Credentials::new(key, secret),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| s3_error(&self.address, e))?;
        let expiry = Duration::from_secs(60);
        let head = bucket.head_bucket(Some(&credentials)).sign(expiry);
        let status = client
            .head(head.as_str())
            .send()
            .await
            // The URL is presigned: its access key id and signature stay out of messages.
            .map_err(|e| s3_error(&self.address, e.without_url()))?
            .status();
        if status.is_success() {
            return Ok(());
        }
        let create = bucket.create_bucket(&credentials).sign(expiry);
        let body = if self.region == "us-east-1" {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            )
        };
        let response = client
            .put(create.as_str())
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await
            // The URL is presigned: its access key id and signature stay out of messages.
            .map_err(|e| s3_error(&self.address, e.without_url()))?;
        if response.status().is_success() || response.status().as_u16() == 409 {
            tracing::info!(bucket = %self.bucket, "created the bucket");
            Ok(())
        } else {
            Err(s3_error(
                &self.address,
                format!("cannot create the bucket: {}", response.status()),
            ))
        }
    }

    /// Uploads a committed local run folder; `metadata.json` goes last, so a run with
    /// metadata is whole.
    pub async fn upload_run(&self, run: &RunRef) -> Result<String, StoreError> {
        self.ensure_bucket().await?;
        let marker = self.key(&[&run.test_name, &run.id, crate::layout::METADATA]);
        if self.store.head(&marker).await.is_ok() {
            return Err(StoreError::Exists(format!(
                "s3://{}/{}",
                self.bucket,
                self.key(&[&run.test_name, &run.id])
            )));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&run.dir)
            .map_err(|e| StoreError::Io {
                path: run.dir.display().to_string(),
                source: e,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort_by_key(|p| p.file_name().is_some_and(|n| n == crate::layout::METADATA));
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = std::fs::read(&file).map_err(|e| StoreError::Io {
                path: file.display().to_string(),
                source: e,
            })?;
            self.store
                .put(
                    &self.key(&[&run.test_name, &run.id, &name]),
                    PutPayload::from(bytes),
                )
                .await
                .map_err(|e| s3_error(&self.address, e))?;
        }
        Ok(format!(
            "s3://{}/{}",
            self.bucket,
            self.key(&[&run.test_name, &run.id])
        ))
    }

    /// Every run in the store (those whose `metadata.json` arrived).
    pub async fn list_runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        use futures_util::StreamExt as _;
        let prefix = if self.prefix.is_empty() {
            None
        } else {
            Some(ObjectPath::from(self.prefix.as_str()))
        };
        let mut listing = self.store.list(prefix.as_ref());
        let mut runs = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| s3_error(&self.address, e))?;
            let parts: Vec<String> = meta
                .location
                .parts()
                .map(|p| p.as_ref().to_string())
                .collect();
            let n = parts.len();
            if n >= 3 && parts[n - 1] == crate::layout::METADATA {
                runs.push((parts[n - 3].clone(), parts[n - 2].clone()));
            }
        }
        runs.sort();
        Ok(runs)
    }

    /// Downloads one run into `store` (a local folder store), keeping the layout.
    pub async fn download_run(
        &self,
        test: &str,
        id: &str,
        store: &FsStore,
    ) -> Result<PathBuf, StoreError> {
        use futures_util::StreamExt as _;
        let dir = store.root.join(test).join(id);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        let prefix = self.key(&[test, id]);
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| s3_error(&self.address, e))?;
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let bytes = self
                .store
                .get(&meta.location)
                .await
                .map_err(|e| s3_error(&self.address, e))?
                .bytes()
                .await
                .map_err(|e| s3_error(&self.address, e))?;
            let path = dir.join(name);
            std::fs::write(&path, &bytes).map_err(|e| StoreError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
        }
        Ok(dir)
    }
}

/// Uploads every run waiting in `store`'s spool; returns where each went, and removes it
/// from the spool once uploaded.
pub async fn push_spool(store: &S3Store) -> Result<Vec<String>, StoreError> {
    let spool = store.spool();
    let mut pushed = Vec::new();
    for run in spool.list_runs()? {
        let location = store.upload_run(&run).await?;
        remove_run(&run.dir)?;
        pushed.push(location);
    }
    Ok(pushed)
}

/// Removes a local run folder (after its upload).
pub fn remove_run(dir: &Path) -> Result<(), StoreError> {
    std::fs::remove_dir_all(dir).map_err(|e| StoreError::Io {
        path: dir.display().to_string(),
        source: e,
    })
}
