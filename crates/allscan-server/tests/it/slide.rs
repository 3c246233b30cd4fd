//! `POST /api/slide` driven with `oneshot`: several fields -> one SlideReport, ids offset by
//! `first_field`, the rule's level from the query, and the shared limits (token, pixels,
//! busy 503 with Retry-After); no server path in the answer.

use crate::common;

use allscan::slide::SlideReport;
use allscan_server::{app, field_display_name, ErrorBody, ServerConfig};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;

fn slide_req(query: &str, auth: Option<&str>, parts: &[(&str, &str, &[u8])]) -> Request<Body> {
    multipart_req(&format!("/api/slide{query}"), auth, parts)
}

fn error(status: StatusCode, body: &[u8], want: StatusCode) -> String {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    serde_json::from_slice::<ErrorBody>(body).expect("JSON error").error
}

#[tokio::test]
async fn a_slide_of_three_fields_is_one_report() {
    let router = app(state(ServerConfig::default()));
    let (a, b, c) = (field_png(0, 128, 1), field_png(2, 128, 2), field_png(3, 128, 3));
    let parts: [(&str, &str, &[u8]); 3] =
        [("file", "a.png", &a), ("file", "../../etc/b.png", &b), ("file", "C:\\lab\\c.png", &c)];
    let (s, _, body) = send(router.clone(), slide_req("?blast_fraction=0.3", None, &parts)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8(body).unwrap();
    let r: SlideReport = serde_json::from_str(&text).expect("a SlideReport");
    assert_eq!(r.format, "allscan-slide/1");
    assert_eq!(r.counts.fields, 3);
    let names: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["a.png", "b.png", "c.png"], "only the last component of uploaded names");
    assert_eq!(r.rule.blast_fraction, 0.3);
    assert!(r.counts.cells_found >= 3, "{:?}", r.counts);
    let mut ids: Vec<&str> = r.cells().map(|c| c.id.as_str()).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "cell ids are unique");
    // The counts are the slide model's own: recounting changes nothing.
    let mut again = r.clone();
    again.recount();
    // Compared as JSON text reads back (serde_json's default float parse may move the last ulp).
    let again: SlideReport = serde_json::from_str(&serde_json::to_string(&again).unwrap()).unwrap();
    assert_eq!(again, r);
    let cwd = std::env::current_dir().unwrap();
    assert!(!text.contains(cwd.to_str().unwrap()) && !text.contains("/tmp/"), "no server path in {text}");

    // A second part of the same slide continues the numbering.
    let (s, _, body) = send(router, slide_req("?first_field=3", None, &[("file", "d.png", &a)])).await;
    assert_eq!(s, StatusCode::OK);
    let part: SlideReport = serde_json::from_slice(&body).unwrap();
    assert!(part.cells().all(|c| c.field == 3 && c.id.starts_with("f3-")));
    assert_eq!(part.rule.blast_fraction, allscan::slide::DEFAULT_BLAST_FRACTION);
}

#[tokio::test]
async fn slide_uploads_meet_the_same_limits() {
    let img = field_png(1, 96, 4);
    let one: [(&str, &str, &[u8]); 1] = [("file", "a.png", &img)];
    let router = app(state(ServerConfig::default()));
    for q in ["?blast_fraction=0", "?blast_fraction=2", "?blast_fraction=x", "?first_field=100001"] {
        let (s, _, b) = send(router.clone(), slide_req(q, None, &one)).await;
        error(s, &b, StatusCode::BAD_REQUEST);
    }
    let (s, _, b) = send(router.clone(), slide_req("", None, &[])).await;
    assert!(error(s, &b, StatusCode::BAD_REQUEST).contains("no image"));
    let (s, _, b) = send(router.clone(), slide_req("", None, &[("file", "x.png", b"not an image")])).await;
    assert!(s.is_client_error(), "{s}: {}", String::from_utf8_lossy(&b));

    let huge = png_claiming(20_000, 20_000);
    let (s, _, b) = send(router, slide_req("", None, &[("file", "big.png", &huge)])).await;
    error(s, &b, StatusCode::PAYLOAD_TOO_LARGE);

    let tokened = app(state(ServerConfig { token: Some("s3cret".into()), ..Default::default() }));
    let (s, _, b) = send(tokened.clone(), slide_req("", None, &one)).await;
    error(s, &b, StatusCode::UNAUTHORIZED);
    let (s, _, _) = send(tokened, slide_req("", Some("Bearer s3cret"), &one)).await;
    assert_eq!(s, StatusCode::OK);

    let st = state(ServerConfig { max_concurrent: 1, retry_after_s: 3, ..Default::default() });
    let held = st.hold_slot().expect("a free slot");
    let (s, h, b) = send(app(st.clone()), slide_req("", None, &one)).await;
    error(s, &b, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h[header::RETRY_AFTER], "3");
    drop(held);
    assert_eq!(st.free_slots(), 1);
}

#[test]
fn uploaded_names_lose_their_folders() {
    assert_eq!(field_display_name("a/b/c.png"), "c.png");
    assert_eq!(field_display_name("C:\\x\\y.jpg"), "y.jpg");
    assert_eq!(field_display_name(".."), "upload");
    assert_eq!(field_display_name("dir/"), "upload");
    assert_eq!(field_display_name("a\u{0}b\n.png"), "ab.png");
}
