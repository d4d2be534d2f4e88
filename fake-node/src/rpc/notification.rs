//! Subscription notifications built from a pre-rendered envelope.
//!
//! jsonrpsee turns each `sink.send(result)` into a notification by serializing the whole
//! `{"jsonrpc":"2.0","method":…,"params":{"subscription":…,"result":…}}` object: a copy of the
//! result, a growing buffer, a clone of the subscription id, for every notification. With a
//! hundred subscribers that is a hundred serializations per block of the same header. Here the
//! part before the result is rendered once per subscription, and each notification is that prefix,
//! the shared result JSON and `}}` in one exactly sized buffer; the bytes are the ones jsonrpsee
//! (and so a real node, which also serves through jsonrpsee) would send.

use jsonrpsee::types::SubscriptionId;
use serde_json::value::RawValue;

/// The bytes of one subscription's notifications around their result.
#[derive(Debug, Clone)]
pub(super) struct Envelope {
    /// `{"jsonrpc":"2.0","method":"<method>","params":{"subscription":<id>,"result":`
    prefix: String,
}

/// What follows the result: the end of `params` and of the notification.
const SUFFIX: &str = "}}";

impl Envelope {
    /// The envelope of notifications named `method` (e.g. `chain_finalizedHead`) for subscription
    /// `id`.
    pub(super) fn new(method: &str, id: &SubscriptionId<'_>) -> Self {
        let method = serde_json::to_string(method).expect("a string serializes");
        let id = serde_json::to_string(id).expect("a subscription id serializes");
        Envelope {
            prefix: format!(
                r#"{{"jsonrpc":"2.0","method":{method},"params":{{"subscription":{id},"result":"#
            ),
        }
    }

    /// The complete notification carrying `result`.
    pub(super) fn wrap(&self, result: &RawValue) -> Box<RawValue> {
        let result = result.get();
        let mut json = String::with_capacity(self.prefix.len() + result.len() + SUFFIX.len());
        json.push_str(&self.prefix);
        json.push_str(result);
        json.push_str(SUFFIX);
        // The prefix is a valid JSON object up to its last member's value, `result` is valid JSON
        // and the suffix closes both objects, so this check cannot fail; it costs a scan of the
        // bytes, far less than serializing them.
        RawValue::from_string(json).expect("an envelope around valid JSON is valid JSON")
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use jsonrpsee::types::response::{SubscriptionPayload, SubscriptionResponse};

    use super::*;

    /// The notification exactly as jsonrpsee serializes it from `sink.send(result)`.
    fn jsonrpsee_notification(method: &str, id: SubscriptionId<'_>, result: &RawValue) -> String {
        serde_json::to_string(&SubscriptionResponse::new(
            Cow::Borrowed(method),
            SubscriptionPayload {
                subscription: id,
                result,
            },
        ))
        .unwrap()
    }

    #[test]
    fn wrapped_notifications_are_byte_identical_to_jsonrpsee() {
        let header = RawValue::from_string(
            r#"{"parentHash":"0x00","number":"0x1f","stateRoot":"0x01","extrinsicsRoot":"0x02","digest":{"logs":["0x06"]}}"#
                .to_string(),
        )
        .unwrap();
        for id in [
            SubscriptionId::Str(Cow::Borrowed("aBcD1234efGH5678")),
            SubscriptionId::Str(Cow::Borrowed("with \"quotes\" and \\")),
            SubscriptionId::Num(7),
        ] {
            for method in ["chain_finalizedHead", "state_storage", "odd \"name\""] {
                assert_eq!(
                    Envelope::new(method, &id).wrap(&header).get(),
                    jsonrpsee_notification(method, id.clone(), &header),
                    "method {method}, id {id:?}"
                );
            }
        }
    }

    #[test]
    fn wraps_any_json_result() {
        let envelope = Envelope::new("m", &SubscriptionId::Num(1));
        for result in ["null", "[]", r#""text""#, "12", r#"{"a":[1,{"b":null}]}"#] {
            let result = RawValue::from_string(result.to_string()).unwrap();
            assert_eq!(
                envelope.wrap(&result).get(),
                jsonrpsee_notification("m", SubscriptionId::Num(1), &result)
            );
        }
    }
}
