//! DIARETDB1's official split lists (`trainset.txt`, `testset.txt`), parsed tolerantly: one name
//! or path per line, surrounding whitespace and blank lines ignored; only the file stem counts.

use std::path::Path;

use anyhow::{Context, Result};

/// The stems listed in a list file, in file order, without duplicates.
pub fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = crate::io::read_regular_to_string(path)
        .with_context(|| format!("cannot read split list {}", path.display()))?;
    Ok(parse_list(&text))
}

/// Parses list text; see the module docs.
pub fn parse_list(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.rsplit(['/', '\\']).next().unwrap_or(line);
        let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
        if !stem.is_empty() && !out.iter().any(|s| s == stem) {
            out.push(stem.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_parsing() {
        let text = "images/ddb1_fundusimages/image001.png\r\n\n  image003.png  \nimage004\n\
                    C:\\x\\image009.PNG\nimage001.png\n";
        assert_eq!(
            parse_list(text),
            ["image001", "image003", "image004", "image009"]
        );
    }
}
