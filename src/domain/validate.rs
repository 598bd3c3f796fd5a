//! Small parsers for the formats the spec names. Each returns the normalised value or a reason.
use crate::error::FieldError;

pub fn email(field: &str, raw: &str) -> Result<String, FieldError> {
    let bad = || FieldError::new(field, "Invalid format", "Formato inválido");
    let s = raw.trim().to_lowercase();
    if s.len() > 254 {
        return Err(bad());
    }
    let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.len() > 64 || local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(bad());
    }
    let local_ok = local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    if !local_ok {
        return Err(bad());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(bad());
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-') {
            return Err(bad());
        }
        if !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad());
        }
    }
    if labels.last().is_some_and(|tld| tld.len() < 2 || tld.chars().all(|c| c.is_ascii_digit())) {
        return Err(bad());
    }
    Ok(s)
}

/// E.164 (`+5511999990000`) or the spec's readable form (`+55 11 99999-0000`).
pub fn phone(field: &str, raw: &str) -> Result<String, FieldError> {
    let bad = || {
        FieldError::new(
            field,
            "Expected E.164, e.g. +5511999990000 or +55 11 99999-0000",
            "Esperado E.164, ex.: +5511999990000 ou +55 11 99999-0000",
        )
    };
    let s = raw.trim();
    let rest = s.strip_prefix('+').ok_or_else(bad)?;
    if rest.starts_with([' ', '-', '0']) || rest.ends_with([' ', '-']) {
        return Err(bad());
    }
    let mut digits = 0;
    let mut prev_sep = false;
    for c in rest.chars() {
        match c {
            '0'..='9' => {
                digits += 1;
                prev_sep = false;
            }
            ' ' | '-' if !prev_sep => prev_sep = true,
            _ => return Err(bad()),
        }
    }
    if !(8..=15).contains(&digits) {
        return Err(bad());
    }
    Ok(s.to_string())
}

const ISO_3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// ISO 3166-1 alpha-2, upper-cased.
pub fn country(field: &str, raw: &str) -> Result<String, FieldError> {
    let s = raw.trim().to_ascii_uppercase();
    if s.len() == 2 && ISO_3166_ALPHA2.split(' ').any(|c| c == s) {
        Ok(s)
    } else {
        Err(FieldError::new(
            field,
            "Expected an ISO 3166-1 alpha-2 country code, e.g. BR",
            "Esperado código de país ISO 3166-1 alfa-2, ex.: BR",
        ))
    }
}

/// A string of `min..=max` characters after trimming.
pub fn text(field: &str, raw: &str, min: usize, max: usize) -> Result<String, FieldError> {
    let s = raw.trim();
    let n = s.chars().count();
    if n < min || n > max {
        return Err(FieldError::new(
            field,
            format!("Must have between {min} and {max} characters"),
            format!("Deve ter entre {min} e {max} caracteres"),
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(FieldError::new(field, "Must not contain control characters", "Não pode conter caracteres de controle"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(email("e", " Maria@Example.COM ").unwrap(), "maria@example.com");
        for bad in ["", "a", "a@b", "@b.com", "a@.com", "a@b..com", "a b@c.com", "a@b.c", "a@-b.com", "a..b@c.com"] {
            assert!(email("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones_in_e164_or_the_spec_form() {
        for ok in ["+5511999990000", "+55 11 99999-0000", "+1 415-555-0100"] {
            assert!(phone("p", ok).is_ok(), "{ok}");
        }
        for bad in ["11999990000", "+55  11", "+0 11 99999", "+55 11 9999x-0000", "+123", "+55-", "+55 11 99999-0000 0000 0000"] {
            assert!(phone("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn countries_are_iso_alpha2() {
        assert_eq!(country("c", "br").unwrap(), "BR");
        assert!(country("c", "XX").is_err());
        assert!(country("c", "BRA").is_err());
    }
}
