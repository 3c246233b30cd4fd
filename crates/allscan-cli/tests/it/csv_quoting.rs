//! CSV output is read back by a CSV reader whatever the file names: `allscan predict --format
//! csv` on a field whose path holds a comma and a quote gives that path back, field and cell
//! rows alike, every row as long as the header.

use crate::common;

use allscan::config::TaskKind;
use common::{allscan, stderr, stdout};

#[test]
fn a_path_with_a_comma_and_a_quote_round_trips_through_predict_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    allscan::bundle::testing::write_random_bundle(&run, TaskKind::Binary).unwrap();
    let imgs = tmp.path().join("imgs");
    let odd = "lab 2, \"B\"";
    std::fs::create_dir_all(imgs.join(odd)).unwrap();
    let field = allscan::synth::render_field(1, 96, &mut allscan::synth::field_rng(1, 1, 0));
    field.image.save(imgs.join(odd).join("smear,1.png")).unwrap();
    field.image.save(imgs.join("plain.png")).unwrap();

    let (r, i) = (run.to_str().unwrap(), imgs.to_str().unwrap());
    let o = allscan(tmp.path(), &["predict", r, i, "--format", "csv", "--cells"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    assert_eq!(&header[0], "path");
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
    assert!(rows.iter().all(|row| row.len() == header.len()), "{text}");
    let paths: std::collections::BTreeSet<&str> = rows.iter().map(|row| &row[0]).collect();
    let expected = format!("{odd}/smear,1.png");
    assert!(
        paths.iter().any(|p| p.ends_with(&expected)) && paths.iter().any(|p| p.ends_with("plain.png")),
        "{paths:?} in {text}"
    );
    assert_eq!(paths.len(), 2, "field and cell rows name the same two paths: {paths:?}");
    assert!(text.contains("\"\"B\"\""), "the quote is doubled inside a quoted field: {text}");
}
