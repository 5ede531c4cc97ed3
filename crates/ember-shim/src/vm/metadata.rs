//! The VM's metadata document (Ember's MMDS): kept by the shim, replaced by
//! `SetVMMetadata`, patched by `UpdateVMMetadata` (a JSON merge patch, RFC 7396),
//! and pushed whole to the agent, which publishes it in the guest and in every
//! container at `/run/ember/metadata/metadata.json`.

use ember_ttrpc::{Code, Status};
use serde_json::Value;

use super::{err, VmHost};

/// Applies the merge patch `patch` to `target` (RFC 7396).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn parse(json: &str) -> Result<Value, Status> {
    serde_json::from_str(json).map_err(|e| {
        err(
            Code::InvalidArgument,
            format!("the metadata is not valid JSON: {e}"),
        )
    })
}

impl VmHost {
    /// Replaces the document.
    pub async fn set_metadata(&self, json: &str) -> Result<(), Status> {
        let doc = parse(json)?;
        self.publish_metadata(|cur| *cur = Some(doc)).await
    }

    /// Merges `patch` into the document.
    pub async fn update_metadata(&self, patch: &str) -> Result<(), Status> {
        let patch = parse(patch)?;
        self.publish_metadata(|cur| {
            let doc = cur.get_or_insert_with(|| Value::Object(Default::default()));
            merge_patch(doc, &patch);
        })
        .await
    }

    /// The document (`{}` when none was set).
    pub fn metadata(&self) -> String {
        self.metadata
            .lock()
            .unwrap()
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "{}".into())
    }

    /// Changes the document and hands the whole of it to a running VM's agent; a VM
    /// that boots later gets it at boot. A failed push leaves the document as it was.
    async fn publish_metadata(
        &self,
        change: impl FnOnce(&mut Option<Value>),
    ) -> Result<(), Status> {
        let _l = self.metadata_lock.lock().await;
        let mut next = self.metadata.lock().unwrap().clone();
        change(&mut next);
        let text = next.as_ref().map(|d| d.to_string()).unwrap_or_default();
        if self.phase_up() {
            self.agent()?.set_metadata(&text).await.map_err(|e| {
                err(
                    Code::Internal,
                    format!("publishing the metadata in VM {}: {e}", self.id),
                )
            })?;
        }
        *self.metadata.lock().unwrap() = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The examples of RFC 7396, appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }
}
