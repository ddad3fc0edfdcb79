use std::time::Duration;

use airlock_host_apis::{AgentIdentity, CallerInstance, Delegation, SkillIdentity, Subject, Task};

use super::*;

fn subject(instance: &str) -> Subject {
    Subject {
        instance: instance.into(),
        skill: SkillIdentity {
            digest: "ab12".into(),
            name: "report".into(),
            ..SkillIdentity::default()
        },
        agent: AgentIdentity {
            id: "planner-7".into(),
            ..AgentIdentity::default()
        },
        task: Task {
            id: "task-42".into(),
            intent: "summarise q3".into(),
            ..Task::default()
        },
        delegation: Delegation {
            depth: 2,
            chain: vec!["root".into(), "mid".into()],
            callers: vec![
                CallerInstance {
                    digest: "d0".into(),
                    instance: "i0".into(),
                },
                CallerInstance {
                    digest: "d1".into(),
                    instance: "i1".into(),
                },
            ],
        },
    }
}

fn issuer(dir: &Path) -> Arc<Issuer> {
    Issuer::open(dir, IdentityConfig::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_token_carries_the_instance_identity_and_the_delegation_chain() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let issuer = issuer(dir.path());
    let token = issuer
        .issue(&subject("i2"), "https://api.example.com", now() + 60)
        .unwrap_or_else(|e| panic!("{e}"));
    let claims = issuer.verify(&token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(claims.sub, "spiffe://airlock.local/skill/ab12/run/i2");
    assert_eq!(claims.aud, "https://api.example.com");
    assert_eq!(claims.task_id, "task-42");
    assert_eq!(claims.intent, "summarise q3");
    assert_eq!(claims.agent, "planner-7");
    assert_eq!(claims.instance(), Some("i2"));
    // RFC 8693: the outermost `act` is the nearest caller.
    let act = claims.act.unwrap_or_else(|| panic!("no act"));
    assert_eq!(act.sub, "spiffe://airlock.local/skill/d1/run/i1");
    assert_eq!(
        act.act.map(|a| a.sub).as_deref(),
        Some("spiffe://airlock.local/skill/d0/run/i0")
    );
}

#[test]
fn tampering_with_a_token_breaks_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let issuer = issuer(dir.path());
    let token = issuer
        .issue(&subject("i"), "aud", now() + 60)
        .unwrap_or_else(|e| panic!("{e}"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = b64(br#"{"iss":"http://127.0.0.1:8480","sub":"spiffe://airlock.local/skill/x/run/i","aud":"aud","iat":0,"exp":99999999999,"jti":"j","task_id":"","intent":"","agent":""}"#);
    let forged = format!(
        "{}.{forged_claims}.{}",
        parts.first().unwrap_or(&""),
        parts.get(2).unwrap_or(&"")
    );
    assert_eq!(issuer.verify(&forged), Err(Invalid::Signature));
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","kid":"x"}"#),
        parts.get(1).unwrap_or(&"")
    );
    assert_eq!(issuer.verify(&none), Err(Invalid::UnknownKey));
    assert_eq!(issuer.verify("garbage"), Err(Invalid::Malformed));
    let expired = issuer
        .issue(&subject("i"), "aud", now().saturating_sub(1))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(issuer.verify(&expired), Err(Invalid::Expired));
}

#[test]
fn a_token_lives_no_longer_than_the_maximum_ttl() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = IdentityConfig {
        max_token_ttl: Duration::from_secs(30),
        ..IdentityConfig::default()
    };
    let issuer = Issuer::open(dir.path(), config).unwrap_or_else(|e| panic!("{e}"));
    let token = issuer
        .issue(&subject("i"), "aud", now() + 3600)
        .unwrap_or_else(|e| panic!("{e}"));
    let claims = issuer.verify(&token).unwrap_or_else(|e| panic!("{e}"));
    assert!(claims.exp <= claims.iat + 30);
}

#[test]
fn introspection_is_active_only_while_the_instance_runs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let issuer = issuer(dir.path());
    let token = issuer
        .issue(&subject("i9"), "aud", now() + 60)
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = issuer.introspect(&token);
    assert_eq!(answer["active"], true);
    assert_eq!(answer["sub"], "spiffe://airlock.local/skill/ab12/run/i9");
    issuer.ended("i9");
    assert_eq!(
        issuer.introspect(&token),
        serde_json::json!({"active": false})
    );
    // A restart knows no running instance: still inactive.
    let reopened =
        Issuer::open(dir.path(), IdentityConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(reopened.verify(&token).is_ok());
    assert_eq!(reopened.introspect(&token)["active"], false);
}

#[test]
fn the_key_is_private_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let first = issuer(dir.path());
    let token = first
        .issue(&subject("i"), "aud", now() + 60)
        .unwrap_or_else(|e| panic!("{e}"));
    let second = issuer(dir.path());
    assert!(second.verify(&token).is_ok());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = identity_dir(dir.path()).join("keys.json");
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default();
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = Issuer::open(dir.path(), IdentityConfig::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("must be 0600"), "{err}");
    }
}

#[test]
fn rotation_signs_with_a_new_key_and_still_verifies_old_tokens() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let issuer = issuer(dir.path());
    let old = issuer
        .issue(&subject("i"), "aud", now() + 60)
        .unwrap_or_else(|e| panic!("{e}"));
    let old_kid = issuer.keys().current().map(|k| k.kid).unwrap_or_default();
    // Rotated from another process (`airlock identity rotate`).
    let new_kid = rotate(dir.path(), &IdentityConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(old_kid, new_kid);
    let new = issuer
        .issue(&subject("i"), "aud", now() + 60)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(issuer.verify(&old).is_ok());
    assert!(issuer.verify(&new).is_ok());
    let kids: Vec<String> = issuer.jwks()["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(kids, vec![old_kid.clone(), new_kid.clone()]);
    // Once its tokens have all expired, the old key is gone.
    let short = IdentityConfig {
        max_token_ttl: Duration::ZERO,
        ..IdentityConfig::default()
    };
    std::thread::sleep(Duration::from_millis(1100));
    let pruned = Issuer::open(dir.path(), short).unwrap_or_else(|e| panic!("{e}"));
    let kids = pruned.jwks()["keys"].as_array().map_or(0, Vec::len);
    assert_eq!(kids, 1);
    assert_eq!(pruned.verify(&old), Err(Invalid::UnknownKey));
}
