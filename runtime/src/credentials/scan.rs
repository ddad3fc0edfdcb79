//! Finding live credential values in data a skill sends or shows.
//!
//! A value is searched for raw, hex (either case), base64 (standard and
//! URL-safe, at each of the three alignments it can take inside a longer
//! encoded text) and URL-encoded. One Aho-Corasick automaton holds every
//! form of every value, so a scan is one pass whatever the number of
//! credentials. Redaction also takes out the first part of a form where
//! the host cut a string short (`…`).

use aho_corasick::AhoCorasick;
use airlock_host_apis::secrets::SecretValue;
use base64::Engine as _;
use zeroize::Zeroizing;

/// A live value and where it may go.
#[derive(Clone, Debug)]
pub struct Live {
    pub name: String,
    pub value: SecretValue,
    /// The one host it may be sent to (a token's audience), if any.
    pub audience_host: Option<String>,
}

/// What replaces a value found in output, logs or a response.
pub const REDACTED: &str = "[redacted]";

/// Encoded forms shorter than this are not searched: they would match by
/// chance.
const MIN_FORM: usize = 8;

/// What the host puts where it cuts a string short (a denial naming a long
/// resource, a record's string bound). A value cut there is no longer whole,
/// and the automaton alone would let its first part through.
const CUT: &str = "…";

/// [`CUT`] as JSON writes it when it escapes what is not ASCII (Python's
/// `json.dumps` does by default).
const CUT_ESCAPED: &str = "\\u2026";

/// A form cut to fewer bytes than this, before a [`CUT`], is left: so short
/// a prefix could match by chance.
const MIN_CUT: usize = 16;

/// Every form of `value` to search for.
pub fn forms(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms: Vec<Zeroizing<Vec<u8>>> = vec![Zeroizing::new(value.to_vec())];
    let mut hex = Zeroizing::new(String::with_capacity(value.len() * 2));
    for byte in value {
        hex.push_str(&format!("{byte:02x}"));
    }
    forms.push(Zeroizing::new(hex.as_bytes().to_vec()));
    forms.push(Zeroizing::new(hex.to_ascii_uppercase().into_bytes()));
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for shift in 0..3usize {
            // Inside a longer text the value can start at any byte of a
            // 3-byte group; keep the characters that encode only its bytes.
            let mut shifted = Zeroizing::new(vec![0u8; shift]);
            shifted.extend_from_slice(value);
            let encoded = Zeroizing::new(engine.encode(&*shifted));
            let start = if shift == 0 { 0 } else { 4 };
            let end = (shifted.len() / 3) * 4;
            if let Some(stable) = encoded.get(start..end) {
                forms.push(Zeroizing::new(stable.as_bytes().to_vec()));
            }
        }
    }
    let url: String = url::form_urlencoded::byte_serialize(value).collect();
    forms.push(Zeroizing::new(url.into_bytes()));
    let percent: String = url::form_urlencoded::byte_serialize(value)
        .collect::<String>()
        .replace('+', "%20");
    forms.push(Zeroizing::new(percent.into_bytes()));
    forms.retain(|f| f.len() >= MIN_FORM || f.as_slice() == value);
    forms.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
    forms.dedup_by(|a, b| a.as_slice() == b.as_slice());
    forms
}

/// An automaton over every form of a set of live values.
pub struct Scanner {
    automaton: AhoCorasick,
    /// For each pattern, the live value it is a form of.
    owner: Vec<usize>,
    lives: Vec<(String, Option<String>)>,
    /// Every form, for finding one cut short.
    forms: Vec<Zeroizing<Vec<u8>>>,
    /// The first [`MIN_CUT`] bytes of each longer form, all matches
    /// reported: where one is, a cut form may start.
    heads: Option<AhoCorasick>,
    /// For each head, its form in `forms`.
    head_form: Vec<usize>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("values", &self.lives.len())
            .finish_non_exhaustive()
    }
}

impl Scanner {
    /// `None` when there is nothing to look for.
    pub fn build(lives: &[Live]) -> Option<Self> {
        let mut patterns = Vec::new();
        let mut owner = Vec::new();
        for (n, live) in lives.iter().enumerate() {
            if live.value.expose().is_empty() {
                continue;
            }
            for form in forms(live.value.expose().as_bytes()) {
                patterns.push(form);
                owner.push(n);
            }
        }
        if patterns.is_empty() {
            return None;
        }
        // Longest first, so a redaction removes the whole of a value.
        // A contiguous NFA, not the DFA the builder would pick for so few
        // patterns: the patterns are long (every form of every token, about
        // 9 KiB a token), and a DFA over them is slow to build on every mint
        // and large.
        let automaton = AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .kind(Some(aho_corasick::AhoCorasickKind::ContiguousNFA))
            .build(patterns.iter().map(|p| p.as_slice()));
        let (heads, head_form): (Vec<&[u8]>, Vec<usize>) = patterns
            .iter()
            .enumerate()
            .filter_map(|(n, form)| {
                Some((form.get(..MIN_CUT).filter(|_| form.len() > MIN_CUT)?, n))
            })
            .unzip();
        let heads = AhoCorasick::builder()
            .kind(Some(aho_corasick::AhoCorasickKind::ContiguousNFA))
            .build(heads)
            .ok()
            .filter(|_| !head_form.is_empty());
        match automaton {
            Ok(automaton) => Some(Scanner {
                heads,
                head_form,
                automaton,
                owner,
                lives: lives
                    .iter()
                    .map(|l| (l.name.clone(), l.audience_host.clone()))
                    .collect(),
                forms: patterns,
            }),
            Err(e) => {
                // Refuse to run blind: a scanner that matches everything.
                tracing::error!(error = %e, "cannot build the credential scanner");
                None
            }
        }
    }

    /// The name of a value `data` carries that may not go to `host`.
    pub fn leak(&self, data: &[u8], host: Option<&str>) -> Option<String> {
        self.automaton
            .find_iter(data)
            .filter_map(|m| self.owner.get(m.pattern().as_usize()))
            .filter_map(|n| self.lives.get(*n))
            .find(|(_, audience)| audience.is_none() || audience.as_deref() != host)
            .map(|(name, _)| name.clone())
    }

    /// `data` with every form of every value replaced, or `None` when it
    /// has none.
    pub fn redact(&self, data: &[u8]) -> Option<Vec<u8>> {
        let whole = self.automaton.find(data).map(|_| {
            let mut out = Vec::with_capacity(data.len());
            self.automaton
                .replace_all_with_bytes(data, &mut out, |_, _, dst| {
                    dst.extend_from_slice(REDACTED.as_bytes());
                    true
                });
            out
        });
        let cut = self.redact_cut(whole.as_deref().unwrap_or(data));
        cut.or(whole)
    }

    /// `data` with every value's first part replaced where it ends in a
    /// [`CUT`], or `None` when there is none. Linear in `data`: each place a
    /// form's head matches is compared once, up to the first cut after it.
    fn redact_cut(&self, data: &[u8]) -> Option<Vec<u8>> {
        let heads = self.heads.as_ref()?;
        let mut cuts: Vec<usize> = memchr::memmem::find_iter(data, CUT.as_bytes())
            .chain(memchr::memmem::find_iter(data, CUT_ESCAPED.as_bytes()))
            .collect();
        cuts.sort_unstable();
        if cuts.is_empty() {
            return None;
        }
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for head in heads.find_overlapping_iter(data) {
            let Some(form) = self
                .head_form
                .get(head.pattern().as_usize())
                .and_then(|n| self.forms.get(*n))
            else {
                continue;
            };
            let start = head.start();
            // The first cut after the head; a form cut there is shorter
            // than the whole (a whole one is the automaton's).
            let first = cuts.partition_point(|&at| at < start + MIN_CUT);
            let Some(&end) = cuts.get(first) else {
                continue;
            };
            if end - start >= form.len() {
                continue;
            }
            if data.get(start..end) == form.get(..end - start) {
                spans.push((start, end));
            }
        }
        if spans.is_empty() {
            return None;
        }
        spans.sort_unstable();
        let mut out = Vec::with_capacity(data.len());
        let mut at = 0;
        for (start, end) in spans {
            // Spans that overlap end at the same cut: one replacement.
            if start < at {
                continue;
            }
            out.extend_from_slice(data.get(at..start).unwrap_or_default());
            out.extend_from_slice(REDACTED.as_bytes());
            at = end;
        }
        out.extend_from_slice(data.get(at..).unwrap_or_default());
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENTINEL: &str = "sk-live-SENTINEL-0123456789abcdef";

    fn scanner(audience: Option<&str>) -> Scanner {
        let live = Live {
            name: "api".into(),
            value: SecretValue::new(SENTINEL.into()),
            audience_host: audience.map(String::from),
        };
        Scanner::build(&[live]).unwrap_or_else(|| panic!("no scanner"))
    }

    #[test]
    fn every_encoding_at_every_offset_is_found() {
        let s = scanner(None);
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        for prefix in ["", "a", "ab", "abc", "{\"k\":\""] {
            let text = format!("{prefix}{SENTINEL}tail");
            let encoded = [
                text.clone(),
                STANDARD.encode(&text),
                URL_SAFE_NO_PAD.encode(&text),
                text.bytes().map(|b| format!("{b:02x}")).collect(),
                text.bytes().map(|b| format!("{b:02X}")).collect(),
                url::form_urlencoded::byte_serialize(text.as_bytes()).collect(),
            ];
            for form in encoded {
                assert_eq!(
                    s.leak(form.as_bytes(), None).as_deref(),
                    Some("api"),
                    "{form}"
                );
            }
        }
        assert_eq!(s.leak(b"sk-live-SENTINEL-0123456789abcdeX", None), None);
    }

    #[test]
    fn a_value_cut_short_by_the_host_is_redacted_too() {
        let s = scanner(None);
        let cut = |n: usize| format!("`storage.read` on Object `ns/{}…` denied", &SENTINEL[..n]);
        assert_eq!(
            s.redact(cut(20).as_bytes()).map(String::from_utf8),
            Some(Ok("`storage.read` on Object `ns/[redacted]…` denied".into()))
        );
        // Whole, and cut, in one text.
        let both = format!("{SENTINEL} and {}", cut(MIN_CUT));
        assert_eq!(
            s.redact(both.as_bytes()).map(String::from_utf8),
            Some(Ok(
                "[redacted] and `storage.read` on Object `ns/[redacted]…` denied".into()
            ))
        );
        // Cut, and then escaped by a skill's JSON.
        let escaped = format!(r#"{{"error": "ns/{}\u2026 denied"}}"#, &SENTINEL[..20]);
        assert_eq!(
            s.redact(escaped.as_bytes()).map(String::from_utf8),
            Some(Ok(r#"{"error": "ns/[redacted]\u2026 denied"}"#.into()))
        );
        // Too short a prefix to tell, or a prefix not cut by the host.
        assert_eq!(s.redact(cut(MIN_CUT - 1).as_bytes()), None);
        let uncut = format!("ns/{} denied", &SENTINEL[..20]);
        assert_eq!(s.redact(uncut.as_bytes()), None);
        // Many cuts and heads cost one pass each, not one per pair.
        let head = &SENTINEL[..MIN_CUT];
        let noisy = format!("{}{}{}", "…".repeat(100_000), head.repeat(50_000), cut(20));
        let cleaned = s.redact(noisy.as_bytes()).map(String::from_utf8);
        assert!(
            matches!(&cleaned, Some(Ok(text)) if text.ends_with("ns/[redacted]…` denied")),
            "{:?}",
            cleaned.map(|t| t.map(|t| t.len()))
        );
    }

    #[test]
    fn a_token_may_go_to_its_audience_only() {
        let s = scanner(Some("api.example.com"));
        let data = format!("Bearer {SENTINEL}");
        assert_eq!(s.leak(data.as_bytes(), Some("api.example.com")), None);
        assert_eq!(
            s.leak(data.as_bytes(), Some("evil.example")).as_deref(),
            Some("api")
        );
        assert_eq!(s.leak(data.as_bytes(), None).as_deref(), Some("api"));
    }

    #[test]
    fn redaction_replaces_every_form() {
        let s = scanner(None);
        let hex: String = SENTINEL.bytes().map(|b| format!("{b:02x}")).collect();
        let text = format!("a {SENTINEL} b {hex} c");
        let out = s.redact(text.as_bytes()).unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&out), "a [redacted] b [redacted] c");
        assert_eq!(s.redact(b"nothing here"), None);
    }
}
