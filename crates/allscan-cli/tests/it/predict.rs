//! `allscan predict` end to end on a random-weight bundle: formats, --cells, folders,
//! failures listed with the exit code, and the run's own errors.

use crate::common;

use allscan::config::TaskKind;
use common::{allscan, stderr, stdout};

fn write_fields(dir: &std::path::Path, n: usize) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..n {
        let f = allscan::synth::render_field(i % 4, 96, &mut allscan::synth::field_rng(1, i % 4, i));
        let p = if i % 2 == 0 { dir.join(format!("f{i}.png")) } else { dir.join(format!("sub/f{i}.png")) };
        f.image.save(p).unwrap();
    }
}

#[test]
fn predicts_a_folder_in_every_format_and_lists_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    allscan::bundle::testing::write_random_bundle(&run, TaskKind::Subtype).unwrap();
    let imgs = tmp.path().join("imgs");
    write_fields(&imgs, 3);
    let (r, i) = (run.to_str().unwrap(), imgs.to_str().unwrap());

    let o = allscan(tmp.path(), &["predict", r, i, "--format", "csv", "--cells", "--batch", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = stdout(&o);
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("path,prediction,p_leukemia,subtype,p_Benign,p_Early,p_Pre,p_Pro,n_cells,level,cell"),
        "{header}"
    );
    let rows: Vec<&str> = lines.collect();
    let fields = rows.iter().filter(|l| l.contains(",field,")).count();
    assert_eq!(fields, 3, "{csv}");
    assert!(rows.iter().any(|l| l.contains(",cell,0,")), "{csv}");
    assert!(csv.contains("sub/f1.png"), "recursive walk: {csv}");

    let o = allscan(tmp.path(), &["predict", r, i, "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["results"].as_array().unwrap().len(), 3);
    let p = j["results"][0]["p_leukemia"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert!(j["aggregation"].as_str().unwrap().contains("max"));

    // A bad file among good ones: the good ones are still predicted, the bad one is listed,
    // and the exit code says so.
    std::fs::write(imgs.join("broken.png"), b"not a png at all").unwrap();
    let o = allscan(tmp.path(), &["predict", r, i]);
    assert_eq!(o.status.code(), Some(1));
    let table = stdout(&o);
    assert_eq!(table.lines().filter(|l| l.contains(".png")).count(), 3, "{table}");
    let err = stderr(&o);
    assert!(err.contains("1 file(s) failed") && err.contains("broken.png"), "{err}");
}

#[test]
fn binary_csv_has_the_minimal_columns_and_bad_runs_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    allscan::bundle::testing::write_random_bundle(&run, TaskKind::Binary).unwrap();
    let imgs = tmp.path().join("imgs");
    write_fields(&imgs, 1);
    let o = allscan(
        tmp.path(),
        &["predict", run.to_str().unwrap(), imgs.join("f0.png").to_str().unwrap(), "--format", "csv"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = stdout(&o);
    assert_eq!(csv.lines().next(), Some("path,prediction,p_leukemia"));
    let row = csv.lines().nth(1).unwrap();
    assert!(row.contains(",leukemia,") || row.contains(",healthy,"), "{row}");

    let o = allscan(tmp.path(), &["predict", imgs.to_str().unwrap(), imgs.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
}
