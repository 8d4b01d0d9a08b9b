//! Fly's private-network naming (`.internal`): which names to ask and how to read the TXT
//! answers.
//!
//! - `vms.<app>.internal` TXT: `<instance_id> <region>` pairs separated by commas;
//! - `<instance_id>.vm.<app>.internal` AAAA: one instance's address;
//! - `regions.<app>.internal` TXT: region codes separated by commas;
//! - `<region>.<app>.internal` AAAA: the instances of one region (no ids).

/// `vms.<app>.internal.`
pub fn vms_name(app: &str) -> String {
    format!("vms.{app}.internal.")
}

/// `<id>.vm.<app>.internal.`
pub fn vm_name(id: &str, app: &str) -> String {
    format!("{id}.vm.{app}.internal.")
}

/// `regions.<app>.internal.`
pub fn regions_name(app: &str) -> String {
    format!("regions.{app}.internal.")
}

/// `<region>.<app>.internal.`
pub fn region_name(region: &str, app: &str) -> String {
    format!("{region}.{app}.internal.")
}

fn valid_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Parses the text of `vms.<app>.internal` into `(instance id, region)` pairs. Malformed
/// entries are skipped (and counted in the second value) rather than failing the answer.
pub fn parse_vms(txt: &str) -> (Vec<(String, String)>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for entry in txt.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(region), None) if valid_label(id) && valid_label(region) => {
                let pair = (id.to_ascii_lowercase(), region.to_ascii_lowercase());
                if !out.contains(&pair) {
                    out.push(pair);
                }
            }
            _ => bad += 1,
        }
    }
    (out, bad)
}

/// Parses the text of `regions.<app>.internal` into region codes.
pub fn parse_regions(txt: &str) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for r in txt.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if valid_label(r) {
            let r = r.to_ascii_lowercase();
            if !out.contains(&r) {
                out.push(r);
            }
        } else {
            bad += 1;
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vms_pairs() {
        let (v, bad) = parse_vms("148e21dad76789 sea,4d89699c030518 ams");
        assert_eq!(bad, 0);
        assert_eq!(
            v,
            vec![
                ("148e21dad76789".to_string(), "sea".to_string()),
                ("4d89699c030518".to_string(), "ams".to_string())
            ]
        );
        let (v, bad) = parse_vms(" a iad , ,b  lhr,bad.entry x,c,d e f,e ord,e ord");
        assert_eq!(v.len(), 3);
        assert_eq!(bad, 3);
        assert_eq!(parse_vms("").0.len(), 0);
    }

    #[test]
    fn regions_list() {
        assert_eq!(parse_regions("iad,lhr").0, vec!["iad", "lhr"]);
        assert_eq!(parse_regions("IAD, lhr,,x y").0, vec!["iad", "lhr"]);
        assert_eq!(parse_regions("IAD, lhr,,x y").1, 1);
    }

    #[test]
    fn names() {
        assert_eq!(vms_name("app"), "vms.app.internal.");
        assert_eq!(vm_name("abc", "app"), "abc.vm.app.internal.");
        assert_eq!(regions_name("app"), "regions.app.internal.");
        assert_eq!(region_name("iad", "app"), "iad.app.internal.");
    }
}
