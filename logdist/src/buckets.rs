//! Opening the JetStream KV buckets (membership and stats), creating them when missing, so every
//! binary can start first without a manual `nats kv add`.

use async_nats::jetstream::{self, kv};

/// Why a bucket could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[error("cannot open or create KV bucket {bucket:?} (is JetStream enabled on the server? `nats-server -js` or `jetstream {{}}` in nats.conf)")]
pub struct BucketError {
    pub bucket: String,
    /// Why the bucket could not be opened (the first attempt's error: it says more than the
    /// create's when JetStream is off).
    #[source]
    pub source: jetstream::context::KeyValueError,
}

/// Opens `bucket`, creating it (history 1, file storage) if it does not exist yet.
pub async fn open_or_create_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
) -> Result<kv::Store, BucketError> {
    match js.get_key_value(bucket).await {
        Ok(store) => Ok(store),
        Err(get_err) => {
            let created = js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    description: description.to_string(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(store) => Ok(store),
                // Another process created it between our two calls.
                Err(_) => js.get_key_value(bucket).await.map_err(|_| BucketError {
                    bucket: bucket.to_string(),
                    source: get_err,
                }),
            }
        }
    }
}
