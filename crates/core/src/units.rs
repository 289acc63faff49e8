//! Quantities as people read them.

/// Bytes in binary units: "812 B", "5.3 KiB", "334 MiB", "1.2 GiB" (one
/// decimal below 10, none above).
pub fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 {
        format!("{} {}", v.round() as i64, UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(super::bytes(812), "812 B");
        assert_eq!(super::bytes(5427), "5.3 KiB");
        assert_eq!(super::bytes(342_000_000), "326 MiB");
        assert_eq!(super::bytes(1_288_490_189), "1.2 GiB");
        assert_eq!(super::bytes(-1), "0 B");
    }
}
