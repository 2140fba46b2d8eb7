//! The checks of `[profiles.<name>]`: more apps' sessions behind one
//! gateway, each a session table of its own (the keys of `[session]`, a
//! `preset`, and `[profiles.<name>.identity.headers]`), and that no two
//! profiles can find a session under the same Redis key.

use super::checker::Checker;
use super::file;
use super::keypath::{sub, Seg};
use super::model::{BearerMode, IdentityHeader, KeyTemplate, Profile, SessionSettings};

/// The profile `[session]` and `[identity.headers]` make.
pub const DEFAULT_PROFILE: &str = "default";

impl Checker<'_, '_> {
    /// Every profile: `default` first (from `session` and `identity`), then
    /// `[profiles.<name>]` in file order. `None` when one has an error.
    pub(super) fn profiles(
        &mut self,
        session: Option<&SessionSettings>,
        identity: Option<&Vec<IdentityHeader>>,
    ) -> Option<Vec<Profile>> {
        let mut out = vec![Profile {
            name: DEFAULT_PROFILE.to_owned(),
            session: session?.clone(),
            identity: identity?.clone(),
            redis: None,
        }];
        let path = [Seg::Key("profiles".to_owned())];
        let Some(value) = self.lookup(&path) else {
            return Some(out);
        };
        let Some(table) = value.get_ref().as_table() else {
            self.error(&path, "expected tables [profiles.<name>]");
            return None;
        };
        let mut names: Vec<(usize, String)> = table
            .iter()
            .map(|(k, _)| {
                let name = k.get_ref().to_string();
                (self.position(&sub(&path, &name), true), name)
            })
            .collect();
        names.sort();
        let mut ok = true;
        for (_, name) in names {
            let entry = sub(&path, &name);
            if name == DEFAULT_PROFILE
                || name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.error(
                    &entry,
                    format!(
                        "{name:?} cannot name a profile (letters, digits, `-` and `_`; \
                         \"default\" is [session])"
                    ),
                );
                ok = false;
                continue;
            }
            let Some(f) = self.section::<file::Session>(&entry) else {
                ok = false;
                continue;
            };
            let has_identity = f.identity.is_some();
            let has_redis = f.redis.is_some();
            let session = self.session_table(&entry, f);
            let identity = if has_identity {
                self.identity_at(&sub(&entry, "identity"))
            } else {
                Some(Vec::new())
            };
            let redis = if has_redis {
                self.redis_at(&sub(&entry, "redis")).map(Some)
            } else {
                Some(None)
            };
            match (session, identity, redis) {
                (Some(session), Some(identity), Some(redis)) => out.push(Profile {
                    name,
                    session,
                    identity,
                    redis,
                }),
                _ => ok = false,
            }
        }
        if !ok {
            return None;
        }
        self.disjoint(&out);
        Some(out)
    }

    /// A credential is only ever checked under its route's profile; two
    /// profiles whose keys could meet (on a Redis they share) would
    /// let a session of one app be found under the other's template.
    /// Refused, naming both. So is a second profile with bearer JWTs (one
    /// `[jwt]`, one token key space).
    fn disjoint(&mut self, profiles: &[Profile]) {
        let path_of = |p: &Profile, key: &str| -> Vec<Seg> {
            if p.name == DEFAULT_PROFILE {
                vec![Seg::Key("session".to_owned()), Seg::Key(key.to_owned())]
            } else {
                vec![
                    Seg::Key("profiles".to_owned()),
                    Seg::Key(p.name.clone()),
                    Seg::Key(key.to_owned()),
                ]
            }
        };
        let templates = |p: &Profile| -> Vec<(&'static str, KeyTemplate)> {
            let mut t = vec![("key", p.session.key.clone())];
            if let Some(bearer) = &p.session.bearer_key {
                t.push(("bearer_key", bearer.clone()));
            }
            t
        };
        for (i, a) in profiles.iter().enumerate() {
            // Only profiles on one Redis can meet.
            for b in profiles[i + 1..].iter().filter(|b| b.redis == a.redis) {
                for (a_key, a_template) in templates(a) {
                    for (b_key, b_template) in templates(b) {
                        if a_template.overlaps(&b_template) {
                            self.error(
                                &path_of(b, b_key),
                                format!(
                                    "can name the same Redis keys as `{a_key}` of profile {:?}: \
                                     a session of one app would be found under the other's \
                                     template; give each profile a key prefix of its own",
                                    a.name
                                ),
                            );
                        }
                    }
                }
            }
        }
        let mut jwt = profiles
            .iter()
            .filter(|p| p.session.bearer == BearerMode::Jwt);
        if let (Some(first), Some(second)) = (jwt.next(), jwt.next()) {
            self.error(
                &path_of(second, "bearer"),
                format!(
                    "bearer = \"jwt\" in more than one profile (also {:?}): they would share \
                     [jwt] and its token keys, so a token of one app would admit the other",
                    first.name
                ),
            );
        }
    }

    /// The profiles' names as written (`default` first), for routes to name.
    pub(super) fn profile_names(&self) -> Vec<String> {
        let mut names = vec![DEFAULT_PROFILE.to_owned()];
        let path = [Seg::Key("profiles".to_owned())];
        if let Some(table) = self.lookup(&path).and_then(|v| v.get_ref().as_table()) {
            let mut found: Vec<(usize, String)> = table
                .iter()
                .map(|(k, _)| {
                    let name = k.get_ref().to_string();
                    (self.position(&sub(&path, &name), true), name)
                })
                .filter(|(_, n)| n != DEFAULT_PROFILE)
                .collect();
            found.sort();
            names.extend(found.into_iter().map(|(_, n)| n));
        }
        names
    }

    /// Where a table says `bearer = "jwt"`: `[session]` or a profile's.
    pub(super) fn jwt_bearer_path(&self) -> Option<Vec<Seg>> {
        let session = vec![
            Seg::Key("session".to_owned()),
            Seg::Key("bearer".to_owned()),
        ];
        if self
            .lookup(&session)
            .is_some_and(|v| v.get_ref().as_str() == Some("jwt"))
        {
            return Some(session);
        }
        self.profile_names().into_iter().skip(1).find_map(|name| {
            let path = vec![
                Seg::Key("profiles".to_owned()),
                Seg::Key(name),
                Seg::Key("bearer".to_owned()),
            ];
            self.lookup(&path)
                .is_some_and(|v| v.get_ref().as_str() == Some("jwt"))
                .then_some(path)
        })
    }

    /// The index of the profile a route names (`None` after reporting).
    pub(super) fn profile_index(
        &mut self,
        path: &[Seg],
        name: Option<&str>,
        profiles: &[String],
    ) -> Option<usize> {
        let Some(name) = name else {
            return Some(0);
        };
        match profiles.iter().position(|p| p == name) {
            Some(i) => Some(i),
            None => {
                let known: Vec<String> = profiles.iter().map(|p| format!("{p:?}")).collect();
                self.error(
                    path,
                    format!(
                        "unknown profile {name:?}, expected one of {}",
                        known.join(", ")
                    ),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What `check` accepts (no overlap) can never meet: for any ids,
        /// a key of profile A is never a key of profile B. Small alphabets
        /// make near misses common.
        #[test]
        fn accepted_profiles_never_share_a_key(
            pa in "[ab:]{0,4}", sa in "[ab:]{0,3}",
            pb in "[ab:]{0,4}", sb in "[ab:]{0,3}",
            x in "[ab:]{1,6}", y in "[ab:]{1,6}",
        ) {
            let a = KeyTemplate::parse(&format!("{pa}{{id}}{sa}"), "{id}").unwrap();
            let b = KeyTemplate::parse(&format!("{pb}{{id}}{sb}"), "{id}").unwrap();
            prop_assume!(!a.overlaps(&b));
            prop_assert_ne!(a.render(&x), b.render(&y));
        }
    }

    #[test]
    fn the_presets_keys_are_disjoint_but_express_and_fastify() {
        let t = |s: &str| KeyTemplate::parse(s, "{id}").unwrap();
        let keys = [
            t("session:{id}"),
            t(":1:django.contrib.sessions.cache{id}"),
            t("PHPREDIS_SESSION:{id}"),
            t("sess:{id}"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} {b:?}");
            }
        }
    }
}
