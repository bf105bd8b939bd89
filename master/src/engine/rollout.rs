//! Rolling batches for `fleet.run`, as Ansible's `serial` defines them: a number,
//! a percentage, or a list whose last entry repeats until every host is covered.

#[derive(Debug, Clone, PartialEq)]
pub enum Serial {
    Count(usize),
    Percent(f64),
}

impl Serial {
    pub fn parse_str(s: &str) -> Result<Serial, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("bad serial percentage '{s}'"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("serial percentage must be in (0, 100], got '{s}'"));
            }
            return Ok(Serial::Percent(v));
        }
        let n: usize = t
            .parse()
            .map_err(|_| format!("bad serial '{s}' (a number, \"25%\" or a list)"))?;
        if n == 0 {
            return Err("serial must be at least 1".into());
        }
        Ok(Serial::Count(n))
    }

    fn size(&self, total: usize) -> usize {
        match self {
            Serial::Count(n) => *n,
            // Ansible rounds down, but never below one host.
            Serial::Percent(p) => ((total as f64) * p / 100.0).floor().max(1.0) as usize,
        }
    }
}

/// Split `hosts` into batches. An empty `serial` means one batch with every host.
pub fn batches(hosts: &[String], serial: &[Serial]) -> Vec<Vec<String>> {
    if hosts.is_empty() {
        return Vec::new();
    }
    if serial.is_empty() {
        return vec![hosts.to_vec()];
    }
    let total = hosts.len();
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < total {
        let s = &serial[k.min(serial.len() - 1)];
        let n = s.size(total).max(1);
        let end = i.saturating_add(n).min(total);
        out.push(hosts[i..end].to_vec());
        i = end;
        k += 1;
    }
    out
}

/// True when a batch's failures stop the rollout: the percentage is exceeded
/// (not equalled), or any failure is fatal.
pub fn should_stop(
    failed: usize,
    batch: usize,
    max_fail_percentage: Option<f64>,
    any_errors_fatal: bool,
) -> bool {
    if failed == 0 {
        return false;
    }
    if any_errors_fatal {
        return true;
    }
    match max_fail_percentage {
        Some(m) => (failed as f64) * 100.0 / (batch as f64) > m,
        // Without a threshold, Ansible stops only when a whole batch failed.
        None => failed == batch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("h{i}")).collect()
    }

    fn sizes(b: &[Vec<String>]) -> Vec<usize> {
        b.iter().map(|x| x.len()).collect()
    }

    #[test]
    fn numbers_percentages_and_lists() {
        assert_eq!(
            sizes(&batches(&hosts(6), &[Serial::Count(2)])),
            vec![2, 2, 2]
        );
        assert_eq!(
            sizes(&batches(&hosts(5), &[Serial::Count(2)])),
            vec![2, 2, 1]
        );
        assert_eq!(
            sizes(&batches(&hosts(10), &[Serial::Percent(25.0)])),
            vec![2, 2, 2, 2, 2]
        );
        assert_eq!(
            sizes(&batches(&hosts(3), &[Serial::Percent(10.0)])),
            vec![1, 1, 1]
        );
        let list = [Serial::Count(1), Serial::Count(5), Serial::Percent(50.0)];
        assert_eq!(sizes(&batches(&hosts(20), &list)), vec![1, 5, 10, 4]);
        assert_eq!(sizes(&batches(&hosts(4), &[])), vec![4]);
        assert!(batches(&[], &[Serial::Count(2)]).is_empty());
    }

    #[test]
    fn parse() {
        assert_eq!(Serial::parse_str("25%").unwrap(), Serial::Percent(25.0));
        assert_eq!(Serial::parse_str("3").unwrap(), Serial::Count(3));
        assert!(Serial::parse_str("0").is_err());
        assert!(Serial::parse_str("150%").is_err());
        assert!(Serial::parse_str("many").is_err());
    }

    #[test]
    fn failure_thresholds() {
        assert!(
            !should_stop(1, 2, Some(50.0), false),
            "equalled is not exceeded"
        );
        assert!(should_stop(1, 2, Some(40.0), false));
        assert!(!should_stop(0, 2, Some(0.0), true));
        assert!(should_stop(1, 10, None, true));
        assert!(!should_stop(1, 2, None, false));
        assert!(should_stop(2, 2, None, false));
    }
}
