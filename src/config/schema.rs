//! The keys the file format accepts, read from its serde types so the list
//! cannot drift from what the checker accepts (unknown keys, "did you mean",
//! `sessiongate keys`).

use serde::de::DeserializeOwned;

use super::file;

/// The field names serde knows for struct `T` (used for "did you mean").
pub(super) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("probe"))
        }

        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("probe"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Every key `proxy.toml` accepts, by table, straight from the file format's
/// types (so it cannot drift from what `check` accepts). Inline tables are
/// named after their key (`route.on_unauthenticated`); `jwt.claims` and the
/// `identity.headers` names are free-form.
pub fn accepted_keys() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", fields_of::<file::File>()),
        ("server", fields_of::<file::Server>()),
        ("redis", fields_of::<file::Redis>()),
        ("session", fields_of::<file::Session>()),
        ("session.sliding", fields_of::<file::Sliding>()),
        ("jwt", fields_of::<file::Jwt>()),
        ("cache", fields_of::<file::Cache>()),
        ("identity", fields_of::<file::Identity>()),
        ("identity.headers", fields_of::<file::IdentityTable>()),
        ("upstream", fields_of::<file::Upstream>()),
        ("upstream.health_check", fields_of::<file::HealthCheck>()),
        ("rate_limit", fields_of::<file::RateLimit>()),
        ("rollout", fields_of::<file::Rollout>()),
        ("tls", fields_of::<file::Tls>()),
        ("tls.certificates", fields_of::<file::TlsCertificate>()),
        ("rate_limit.failed_auth_per_ip", fields_of::<file::Bucket>()),
        ("route", fields_of::<file::Route>()),
        (
            "route.on_unauthenticated",
            fields_of::<file::OnUnauthenticated>(),
        ),
        ("admin", fields_of::<file::Admin>()),
        ("admin.metrics_basic_auth", fields_of::<file::BasicAuth>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lists_are_known() {
        assert!(fields_of::<file::Server>().contains(&"listen"));
        assert!(fields_of::<file::File>().contains(&"admin"));
        assert_eq!(fields_of::<file::OnUnauthenticated>(), ["redirect"]);
    }
}
