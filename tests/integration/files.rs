//! Files: upload with the access token (content sniffed, limits per kind), messages naming an
//! upload, signed expiring links for the uploader and for readers of such a message, ranges, and
//! the refusals (too big, wrong type, an executable, no token, not a reader, a tampered or
//! expired link).

use serde_json::{json, Value};

use crate::common::{direct_id, service, token, TestNode};

/// The settings of a node keeping files in a fresh bucket of the S3 API server the test command
/// started (moto), or `None` (skipped) without one.
pub(crate) async fn s3_env() -> Option<Vec<(String, String)>> {
    let url = service("CONFAB_TEST_S3_URL")?;
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let bucket = format!("confab-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let r = reqwest::Client::new().put(format!("{url}/{bucket}")).send().await.expect("the S3 server answers");
    assert!(r.status().is_success(), "creating bucket {bucket}: {}", r.status());
    Some(
        [
            ("CONFAB__FILES__BACKEND", "s3"),
            ("CONFAB__FILES__S3__ENDPOINT", url.as_str()),
            ("CONFAB__FILES__S3__BUCKET", bucket.as_str()),
            ("CONFAB__FILES__S3__ACCESS_KEY_ID", "test"),
            ("CONFAB__FILES__S3__SECRET_ACCESS_KEY", "test"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
}

/// A node with `extra` and, for `s3`, the S3 settings (`None`: skipped).
async fn node(s3: bool, extra: &[(&str, &str)]) -> Option<TestNode> {
    let mut env: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    env.push(("CONFAB__API__KEYS".into(), crate::http_api::keys()));
    if s3 {
        env.extend(s3_env().await?);
    }
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Some(TestNode::with(&refs))
}

/// A PNG header of `w`×`h` (enough for the sniffer and the dimensions), then `extra` bytes.
fn png(w: u32, h: u32, extra: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0]);
    v.extend((0..extra).map(|i| (i % 251) as u8));
    v
}

/// A real PNG of `w`×`h` (a gradient), as a phone would send.
fn real_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn upload(node: &TestNode, user: &str, query: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/files?{query}", node.addr))
        .bearer_auth(token(user, "phone"))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(node: &TestNode, user: Option<&str>, path: &str, range: Option<&str>) -> reqwest::Response {
    let mut rb = reqwest::Client::new().get(format!("http://{}{path}", node.addr));
    if let Some(u) = user {
        rb = rb.bearer_auth(token(u, "phone"));
    }
    if let Some(r) = range {
        rb = rb.header("Range", r);
    }
    rb.send().await.unwrap()
}

async fn code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn an_image_is_uploaded_sent_and_read_by_the_conversation_only() {
    image_round_trip(false).await;
}

#[tokio::test]
async fn an_image_is_uploaded_sent_and_read_by_the_conversation_only_on_s3() {
    image_round_trip(true).await;
}

async fn image_round_trip(s3: bool) {
    let Some(node) = node(s3, &[("CONFAB__FILES__MAX_IMAGE_BYTES", "100000")]).await else { return };
    let content = real_png(640, 480);
    let (st, up) = upload(&node, "alice", "kind=image&name=cat.png", content.clone()).await;
    assert_eq!(st, 200, "{up}");
    let file = &up["file"];
    assert_eq!((file["mime"].as_str(), file["size"].as_u64()), (Some("image/png"), Some(content.len() as u64)));
    assert_eq!(
        (file["width"].as_u64(), file["height"].as_u64(), file["owner"].as_str()),
        (Some(640), Some(480), Some("alice"))
    );
    let id = file["id"].as_str().unwrap().to_owned();
    // Its thumbnail: a JPEG fitting 320×320, the same shape.
    assert_eq!((file["thumbnail"]["width"].as_u64(), file["thumbnail"]["height"].as_u64()), (Some(320), Some(240)));
    let r = get(&node, None, up["thumbnail_url"].as_str().unwrap(), None).await;
    assert_eq!((r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()), (200, "image/jpeg"));
    let thumb = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (320, 240));

    // The uploader's link works, whole and by range.
    let r = get(&node, None, up["url"].as_str().unwrap(), None).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("inline; filename*=UTF-8''cat.png"));
    assert_eq!(r.bytes().await.unwrap().to_vec(), content);
    let r = get(&node, None, up["url"].as_str().unwrap(), Some("bytes=10-19")).await;
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.headers()["content-range"].to_str().unwrap(), format!("bytes 10-19/{}", content.len()));
    assert_eq!(r.bytes().await.unwrap().to_vec(), content[10..20].to_vec());
    let r = get(&node, None, up["url"].as_str().unwrap(), Some(&format!("bytes={}-", content.len()))).await;
    assert_eq!(r.status().as_u16(), 416);

    // Sent in a message by its id: the server fills the body in.
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let m = alice.send_msg(json!({"to": "bob"}), "img1", json!({"type": "image", "file_id": id})).await;
    let body = &m["body"];
    assert_eq!(body["url"], format!("/files/{id}"));
    assert_eq!((body["width"].as_u64(), body["size"].as_u64()), (Some(640), Some(content.len() as u64)));
    assert_eq!(bob.next_event("message").await["body"], *body);
    let ab = direct_id("alice", "bob");
    let seq = m["seq"].as_u64().unwrap();

    // Bob reads it through the message; Carol, who is not in the conversation, cannot.
    let link_path = format!("/files/{id}/link?conv_id={ab}&seq={seq}");
    let link: Value = get(&node, Some("bob"), &link_path, None).await.json().await.unwrap();
    let url = link["url"].as_str().unwrap();
    assert_eq!(get(&node, None, url, None).await.bytes().await.unwrap().to_vec(), content);
    assert_eq!(code(get(&node, Some("carol"), &link_path, None).await).await, (403, "not_member".into()));
    assert_eq!(code(get(&node, Some("bob"), &format!("/files/{id}/link"), None).await).await.1, "invalid_request");
    assert_eq!(code(get(&node, None, &link_path, None).await).await, (401, "unauthorized".into()));
    // A message that does not name the file gives nothing.
    alice.send_msg(json!({"to": "bob"}), "t1", json!({"type": "text", "text": "hi"})).await;
    let other = format!("/files/{id}/link?conv_id={ab}&seq={}", seq + 1);
    assert_eq!(code(get(&node, Some("bob"), &other, None).await).await, (404, "not_found".into()));

    // Tampered and expired links.
    let tampered = url.replace("sig=", "sig=0");
    assert_eq!(code(get(&node, None, &tampered, None).await).await, (403, "link_invalid".into()));
    let expires: u64 = url.split("expires=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
    let longer = url.replace(&format!("expires={expires}"), &format!("expires={}", expires + 3600));
    assert_eq!(code(get(&node, None, &longer, None).await).await, (403, "link_invalid".into()));

    // The backend fetches any file, and uploads as a user with a token it mints for them.
    let f = crate::http_api::ok(&node, "GET", &format!("/api/v1/files/{id}"), None).await;
    assert_eq!(f["file"]["owner"], "alice");
    assert_eq!(get(&node, None, f["url"].as_str().unwrap(), None).await.bytes().await.unwrap().to_vec(), content);
    let minted =
        crate::http_api::ok(&node, "POST", "/api/v1/users/dave/tokens", Some(json!({"device": "backend"}))).await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/files?kind=file&name=notes.txt", node.addr))
        .bearer_auth(minted["token"].as_str().unwrap())
        .body("plain notes")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["file"]["owner"].as_str(), v["file"]["mime"].as_str()), (Some("dave"), Some("text/plain")), "{v}");
    let missing = "/api/v1/files/0123456789abcdef0123456789abcdef";
    crate::http_api::err(&node, "GET", missing, None, 404, "not_found").await;

    // A recalled message no longer gives access.
    alice.expect_ok("recall", json!({"conv_id": ab, "seq": seq})).await;
    assert_eq!(code(get(&node, Some("bob"), &link_path, None).await).await, (404, "not_found".into()));

    // A former member keeps what was sent before they left, not what came after.
    alice.expect_ok("group_create", json!({"group_id": "pics", "name": "Pics", "members": ["bob"]})).await;
    let before = alice.send_msg(json!({"conv_id": "g_pics"}), "g1", json!({"type": "image", "file_id": id})).await;
    alice.expect_ok("group_remove", json!({"group_id": "pics", "members": ["bob"]})).await;
    let after = alice.send_msg(json!({"conv_id": "g_pics"}), "g2", json!({"type": "image", "file_id": id})).await;
    let at = |m: &Value| format!("/files/{id}/link?conv_id=g_pics&seq={}", m["seq"]);
    assert_eq!(get(&node, Some("bob"), &at(&before), None).await.status().as_u16(), 200);
    assert_eq!(code(get(&node, Some("bob"), &at(&after), None).await).await, (404, "not_found".into()));
    // A disabled user can neither upload nor ask for links.
    crate::http_api::ok(&node, "POST", "/api/v1/users/bob/disable", None).await;
    assert_eq!(upload(&node, "bob", "kind=file", b"notes".to_vec()).await.1["error"]["code"], "user_disabled");
    assert_eq!(code(get(&node, Some("bob"), &at(&before), None).await).await, (403, "user_disabled".into()));

    // An operator deletes the file: its links, its thumbnail and the messages naming it give
    // nothing any more, on either backend; a second delete finds nothing.
    let f = crate::http_api::ok(&node, "GET", &format!("/api/v1/files/{id}"), None).await;
    let (url, thumb) = (f["url"].as_str().unwrap().to_owned(), f["thumbnail_url"].as_str().unwrap().to_owned());
    assert_eq!(get(&node, None, &thumb, None).await.status().as_u16(), 200);
    let d = crate::http_api::ok(&node, "DELETE", &format!("/api/v1/files/{id}"), None).await;
    assert_eq!(d["deleted"], true);
    assert_eq!(code(get(&node, None, &url, None).await).await, (404, "not_found".into()));
    assert_eq!(code(get(&node, None, &thumb, None).await).await, (404, "not_found".into()));
    assert_eq!(
        code(get(&node, Some("alice"), &format!("/files/{id}/link"), None).await).await,
        (404, "not_found".into())
    );
    crate::http_api::err(&node, "DELETE", &format!("/api/v1/files/{id}"), None, 404, "not_found").await;
    let mut data = json!({"conv_id": "g_pics", "client_msg_id": "g3"});
    data["body"] = json!({"type": "image", "file_id": id});
    alice.expect_err("send", data, "invalid_body").await;
}

#[tokio::test]
async fn uploads_are_refused_by_size_type_and_content() {
    refusals(false).await;
}

#[tokio::test]
async fn uploads_are_refused_by_size_type_and_content_on_s3() {
    refusals(true).await;
}

async fn refusals(s3: bool) {
    let limits = [("CONFAB__FILES__MAX_IMAGE_BYTES", "1000"), ("CONFAB__FILES__LINK_TTL_SECS", "10")];
    let Some(node) = node(s3, &limits).await else { return };
    let (st, v) = upload(&node, "alice", "kind=image", png(10, 10, 2000)).await;
    assert_eq!((st, v["error"]["code"].as_str()), (413, Some("file_too_large")), "{v}");
    let (st, v) = upload(&node, "alice", "kind=image&name=photo.jpg", b"MZ\x90\x00\x03\x00\x00\x00".to_vec()).await;
    assert_eq!((st, v["error"]["code"].as_str()), (415, Some("file_type_refused")), "an .exe named .jpg: {v}");
    let (st, v) = upload(&node, "alice", "kind=file&name=run.sh", b"#!/bin/sh\necho hi\n".to_vec()).await;
    assert_eq!((st, v["error"]["code"].as_str()), (415, Some("file_type_refused")), "{v}");
    let (st, v) = upload(&node, "alice", "kind=image", b"%PDF-1.7\n".to_vec()).await;
    assert_eq!((st, v["error"]["code"].as_str()), (415, Some("file_type_refused")), "a PDF is not an image: {v}");
    let (st, v) = upload(&node, "alice", "kind=image", png(20_000, 20_000, 10)).await;
    assert_eq!((st, v["error"]["code"].as_str()), (415, Some("file_type_refused")), "400 megapixels: {v}");
    let (st, v) = upload(&node, "alice", "kind=image", png(30, 30, 200)).await;
    assert_eq!((st, v["error"]["code"].as_str()), (415, Some("file_type_refused")), "a PNG header, then noise: {v}");
    for bad in ["kind=movie", "", "kind=file&name=a/b"] {
        let (st, v) = upload(&node, "alice", bad, b"hello".to_vec()).await;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_request")), "{bad}: {v}");
    }
    let (st, v) = upload(&node, "alice", "kind=file", Vec::new()).await;
    assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_request")), "empty: {v}");
    let r =
        reqwest::Client::new().post(format!("http://{}/files?kind=file", node.addr)).body("x").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (st, pdf) =
        upload(&node, "alice", "kind=file&name=report%20%C3%A9t%C3%A9.pdf", b"%PDF-1.7\n%...".to_vec()).await;
    assert_eq!(st, 200, "{pdf}");
    assert_eq!(pdf["file"]["mime"], "application/pdf");
    let r = get(&node, None, pdf["url"].as_str().unwrap(), None).await;
    assert_eq!(
        r.headers()["content-disposition"].to_str().unwrap(),
        "attachment; filename*=UTF-8''report%20%C3%A9t%C3%A9.pdf"
    );
    // A file sent as an image is refused; a missing file too.
    let mut alice = node.connect("alice", "phone").await;
    let id = pdf["file"]["id"].as_str().unwrap();
    let send = |body: Value| json!({"to": "bob", "client_msg_id": "x1", "body": body});
    alice.expect_err("send", send(json!({"type": "image", "file_id": id})), "invalid_body").await;
    alice
        .expect_err(
            "send",
            send(json!({"type": "file", "file_id": "0123456789abcdef0123456789abcdef"})),
            "invalid_body",
        )
        .await;
    let m = alice.send_msg(json!({"to": "bob"}), "f1", json!({"type": "file", "file_id": id})).await;
    assert_eq!(
        (m["body"]["name"].as_str(), m["body"]["mime"].as_str()),
        (Some("report été.pdf"), Some("application/pdf"))
    );
}

/// A large file goes to object storage in parts and comes back whole and by range.
#[tokio::test]
async fn a_large_file_is_stored_in_parts_on_s3() {
    let Some(node) = node(true, &[]).await else { return };
    let content: Vec<u8> = (0..(20u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let (st, up) = upload(&node, "alice", "kind=file&name=big.bin", content.clone()).await;
    assert_eq!(st, 200, "{up}");
    assert_eq!(up["file"]["size"].as_u64(), Some(content.len() as u64));
    let url = up["url"].as_str().unwrap();
    let got = get(&node, None, url, None).await.bytes().await.unwrap();
    assert!(got.len() == content.len() && got[..] == content[..], "the whole file back");
    let r = get(&node, None, url, Some("bytes=9000000-9000099")).await;
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), content[9_000_000..9_000_100].to_vec());
}

async fn call(
    node: &TestNode,
    user: &str,
    method: &str,
    path: &str,
    offset: Option<u64>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut rb = reqwest::Client::new()
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("http://{}{path}", node.addr))
        .bearer_auth(token(user, "phone"))
        .body(body);
    if let Some(o) = offset {
        rb = rb.header("Upload-Offset", o.to_string());
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A resumable upload: parts at the offsets the server confirms, a wrong offset or too many bytes
/// refused without changing anything, the last part completing the file.
#[tokio::test]
async fn a_video_is_uploaded_in_parts_and_resumed() {
    resumable(false).await;
}

#[tokio::test]
async fn a_video_is_uploaded_in_parts_and_resumed_on_s3() {
    resumable(true).await;
}

async fn resumable(s3: bool) {
    let Some(node) = node(s3, &[("CONFAB__FILES__MAX_VIDEO_BYTES", "1000000")]).await else { return };
    let mut video = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    video.extend((0..300_000u32).map(|i| (i % 253) as u8));
    let n = video.len() as u64;
    let up = format!("/files/uploads/trip-{}-0123456789", if s3 { "s3" } else { "disk" });
    let create = format!("{up}?kind=video&name=trip.mp4&size={n}");
    let (st, c) = call(&node, "alice", "PUT", &create, None, vec![]).await;
    assert_eq!((st, c["offset"].as_u64()), (201, Some(0)), "{c}");
    let (st, r) = call(&node, "alice", "PATCH", &up, Some(0), video[..100_000].to_vec()).await;
    assert_eq!((st, r["offset"].as_u64()), (200, Some(100_000)), "{r}");
    // The connection dropped; the client asks where to resume, and a stale offset is refused.
    let (st, r) = call(&node, "alice", "PATCH", &up, Some(0), video[..10].to_vec()).await;
    assert_eq!((st, r["error"]["code"].as_str()), (409, Some("conflict")), "{r}");
    assert_eq!(call(&node, "alice", "GET", &up, None, vec![]).await.1["offset"], 100_000);
    assert_eq!(call(&node, "bob", "GET", &up, None, vec![]).await.0, 404, "another user's upload");
    // Creating it again is idempotent (where it is); other settings, or another user, conflict.
    let (st, again) = call(&node, "alice", "PUT", &create, None, vec![]).await;
    assert_eq!((st, again["offset"].as_u64()), (200, Some(100_000)), "{again}");
    let other = format!("{up}?kind=video&name=trip.mp4&size={}", n + 1);
    assert_eq!(call(&node, "alice", "PUT", &other, None, vec![]).await.0, 409);
    assert_eq!(call(&node, "bob", "PUT", &create, None, vec![]).await.0, 409);
    let short = "/files/uploads/abc?kind=video&size=10";
    assert_eq!(call(&node, "alice", "PUT", short, None, vec![]).await.1["error"]["code"], "invalid_request");
    let (st, r) = call(&node, "alice", "PATCH", &up, Some(100_000), vec![0; n as usize]).await;
    assert_eq!((st, r["error"]["code"].as_str()), (400, Some("invalid_request")), "more than declared: {r}");
    assert_eq!(call(&node, "alice", "GET", &up, None, vec![]).await.1["offset"], 100_000, "nothing kept");
    let (st, done) = call(&node, "alice", "PATCH", &up, Some(100_000), video[100_000..].to_vec()).await;
    assert_eq!(st, 200, "{done}");
    assert_eq!((done["file"]["mime"].as_str(), done["file"]["size"].as_u64()), (Some("video/mp4"), Some(n)));
    let got = get(&node, None, done["url"].as_str().unwrap(), None).await.bytes().await.unwrap();
    assert!(got[..] == video[..], "the file is whole");
    assert_eq!(call(&node, "alice", "GET", &up, None, vec![]).await.0, 404, "finished");
    let big = "/files/uploads/too-big-0123456789ab?kind=video&size=2000000";
    let (st, r) = call(&node, "alice", "PUT", big, None, vec![]).await;
    assert_eq!((st, r["error"]["code"].as_str()), (413, Some("file_too_large")), "{r}");
    // An executable completed in parts is refused like a whole one.
    let up = "/files/uploads/elf-0123456789abcdef";
    assert_eq!(call(&node, "alice", "PUT", &format!("{up}?kind=file&size=4"), None, vec![]).await.0, 201);
    let (st, r) = call(&node, "alice", "PATCH", up, Some(0), b"\x7fELF".to_vec()).await;
    assert_eq!((st, r["error"]["code"].as_str()), (415, Some("file_type_refused")), "{r}");
}
