//! Unit tests of narinfo parsing, printing and signing.
use super::*;

const VEC_C: &str = "StorePath: /nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c
URL: nar/0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i.nar
Compression: none
FileHash: sha256:0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i
FileSize: 224
NarHash: sha256:0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i
NarSize: 224
References: nk183nb5dfayh95z7ibawczbvbs8gv3z-vec-b si47kwc33psiwfxkyw4c9qwx7r6n5zca-vec-a.txt
Deriver: scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv
Sig: test-cache-1:bPJPwovyayMvdJE7RV9fZxm9Pyo2Ce18LgOcR6xbLxfqXWi4nYKd9xCcVOHQJZhLWJwZQfZwNjDJZ/fZC+noAw==
";
fn dir() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

fn parse(text: &str) -> Result<NarInfo, NarInfoError> {
    NarInfo::parse(text, &dir())
}

#[test]
fn round_trip_and_fields() {
    let c = parse(VEC_C).unwrap();
    assert_eq!(c.to_text(&dir()), VEC_C);
    assert_eq!(
        c.store_path().as_str(),
        "a8z667l486sd21m8rs058ir3b2sh8k14-vec-c"
    );
    assert_eq!(c.compression(), Some("none"));
    assert_eq!(c.nar_size(), 224);
    assert_eq!(c.file_size(), Some(224));
    assert_eq!(c.references().len(), 2);
    assert_eq!(c.deriver().unwrap().name(), "vec-c.drv");
    assert_eq!((c.system(), c.ca()), (None, None));
    assert_eq!(
        c.fingerprint(&dir()),
        "1;/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c;sha256:0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i;224;/nix/store/nk183nb5dfayh95z7ibawczbvbs8gv3z-vec-b,/nix/store/si47kwc33psiwfxkyw4c9qwx7r6n5zca-vec-a.txt"
    );
    assert!(!c.is_content_addressed(&dir()));
}

#[test]
fn constructors_and_setters_validate() {
    let c = parse(VEC_C).unwrap();
    let (sp, h) = (c.store_path().clone(), *c.nar_hash());
    let sha1 = Hash::of(HashAlgo::Sha1, b"x");
    assert!(NarInfo::new(sp.clone(), "", h, 1).is_err());
    assert!(NarInfo::new(sp.clone(), "u", h, 0).is_err());
    assert!(NarInfo::new(sp.clone(), "u", sha1, 1).is_err());
    let mut info = NarInfo::new(sp, "u", h, 1).unwrap();
    assert!(info.set_file_hash(Some(sha1)).is_err());
    assert!(info.set_nar(h, 0).is_err());
    assert!(info.set_system(Some("a\nb")).is_err());
    assert!(info.set_compression(Some("")).is_err());
    assert!(info.add_sig("a b").is_err());
    assert!(info.set_url("x\ry").is_err());
    assert_eq!(
        info,
        NarInfo::new(c.store_path().clone(), "u", h, 1).unwrap()
    );
}

/// Replaces the first occurrence of `from` in VEC_C.
fn edit(from: &str, to: &str) -> String {
    assert!(VEC_C.contains(from), "{from}");
    VEC_C.replacen(from, to, 1)
}

#[test]
fn tolerated_inputs() {
    let base = parse(VEC_C).unwrap();
    let hex = "sha256:51f0a0d987ca2be813f027f4db90220cb050fb9368fdaf3425c979a5fc7ed878";
    let sri = "sha256-UfCg2YfKK+gT8Cf025AiDLBQ+5No/a80Jcl5pfx+2Hg=";
    let nar = "NarHash: sha256:0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i";
    for text in [
        edit(nar, &format!("NarHash: {hex}")),
        edit(nar, &format!("NarHash: {sri}")),
        edit("Sig:", "Foo: bar\nSig:"),
        edit("Sig:", "Foo: bar:baz\nx-y: \nSig:"),
        edit(
            "nk183nb5dfayh95z7ibawczbvbs8gv3z-vec-b si47kwc33psiwfxkyw4c9qwx7r6n5zca-vec-a.txt",
            "si47kwc33psiwfxkyw4c9qwx7r6n5zca-vec-a.txt nk183nb5dfayh95z7ibawczbvbs8gv3z-vec-b",
        ),
        format!("{VEC_C}{}", VEC_C.lines().last().unwrap_or_default()) + "\n",
    ] {
        let info = parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(info, base, "{text}");
        assert_eq!(info.to_text(&dir()), VEC_C);
    }
    let no_deriver = parse(&edit(
        "scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv",
        "unknown-deriver",
    ))
    .unwrap();
    assert_eq!(no_deriver.deriver(), None);
    let minimal = "StorePath: /nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c\nURL: u\nNarHash: sha256:0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i\nNarSize: 1\n";
    let m = parse(minimal).unwrap();
    assert_eq!(
        (m.compression(), m.file_hash(), m.file_size()),
        (None, None, None)
    );
    assert_eq!(m.to_text(&dir()), format!("{minimal}References: \n"));
    let sys = parse(&edit("Sig:", "System: x86_64-linux\nSig:")).unwrap();
    assert_eq!(sys.system(), Some("x86_64-linux"));
    assert_eq!(
        sys.to_text(&dir()),
        edit("Sig:", "System: x86_64-linux\nSig:")
    );
}

#[test]
fn refused_inputs() {
    let nar = "NarHash: sha256:0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i\n";
    let refs = "References: nk183nb5dfayh95z7ibawczbvbs8gv3z-vec-b si47kwc33psiwfxkyw4c9qwx7r6n5zca-vec-a.txt\n";
    let (nar2, refs2) = (format!("{nar}{nar}"), format!("{refs}{refs}"));
    let sha1 = "NarHash: sha1:kpcd173cq987hw957sx6m0868wv3x6d9\n";
    let dup_ref = "References: si47kwc33psiwfxkyw4c9qwx7r6n5zca-vec-a.txt ";
    // (replace, by, expected start of the error's Debug form)
    let cases = [
        (
            "Compression: none",
            "Compression:none",
            "NoSpaceAfterColon { line: 3 }",
        ),
        (
            "NarSize: 224",
            "NarSize: 0",
            "BadValue { line: 7, field: NarSize",
        ),
        ("NarSize: 224", "NarSize: 0224", "BadValue { line: 7"),
        ("NarSize: 224", "NarSize: +224", "BadValue { line: 7"),
        (
            "NarSize: 224",
            "NarSize: 99999999999999999999",
            "BadValue { line: 7",
        ),
        (
            "FileSize: 224",
            "FileSize: ",
            "BadValue { line: 5, field: FileSize",
        ),
        ("URL: nar/", "URL2: nar/", "Missing { field: Url }"),
        ("StorePath:", "Storepath:", "Missing { field: StorePath }"),
        (nar, "", "Missing { field: NarHash }"),
        ("NarSize: 224\n", "", "Missing { field: NarSize }"),
        (
            "NarHash: sha256:",
            "NarHash: ",
            "Hash { line: 6, field: NarHash",
        ),
        (nar, sha1, "NotSha256 { line: 6"),
        (
            "References: ",
            "References: /nix/store/",
            "StorePath { line: 8",
        ),
        ("-vec-b ", "-vec-b  ", "StorePath { line: 8"),
        ("vec-a.txt\n", "vec-a.txt \n", "StorePath { line: 8"),
        ("References: ", dup_ref, "DuplicateReference { line: 8"),
        (refs, &refs2, "Duplicate { line: 9, field: References }"),
        (nar, &nar2, "Duplicate { line: 7, field: NarHash }"),
        (
            "Deriver: ",
            "Deriver: /nix/store/",
            "StorePath { line: 9, field: Deriver",
        ),
        (
            "Deriver: scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv",
            "Deriver: ",
            "BadValue { line: 9",
        ),
        (
            "/nix/store/a8z6",
            "/gnu/store/a8z6",
            "StorePath { line: 1, field: StorePath",
        ),
        ("Sig: ", "CA: nonsense\nSig: ", "Ca { line: 10"),
        (
            "Sig: test-cache-1:",
            "Sig: test-cache-1: ",
            "BadValue { line: 10, field: Sig",
        ),
        ("Sig:", "just words\nSig:", "BadLine { line: 10 }"),
        ("Sig:", "Foo:bar\nSig:", "NoSpaceAfterColon { line: 10 }"),
        ("Sig:", "\nSig:", "BadLine { line: 10 }"),
        ("Sig:", ": x\nSig:", "BadLine { line: 10 }"),
        (
            "URL: nar/",
            "URL: nar/\t",
            "ControlChar { line: 2, ch: '\\t' }",
        ),
    ];
    let crlf = VEC_C.replace('\n', "\r\n");
    let mut texts: Vec<(String, &str)> = vec![
        (VEC_C.trim_end().to_owned(), "NoFinalNewline"),
        (crlf, "ControlChar { line: 1, ch: '\\r' }"),
        (String::new(), "Missing { field: StorePath }"),
        ("\n".to_owned(), "BadLine { line: 1 }"),
    ];
    texts.extend(cases.iter().map(|(from, to, want)| (edit(from, to), *want)));
    for (text, want) in texts {
        match parse(&text) {
            Ok(_) => panic!("accepted: {text:?}"),
            Err(e) => assert!(format!("{e:?}").starts_with(want), "{e:?} for {text:?}"),
        }
    }
    let big = format!("{VEC_C}{}", "Foo: bar\n".repeat(MAX_NARINFO_SIZE / 9 + 1));
    assert!(matches!(parse(&big), Err(NarInfoError::TooLarge { .. })));
    let not_utf8 = NarInfo::parse_bytes(b"StorePath: \xff\n", &dir());
    assert_eq!(not_utf8, Err(NarInfoError::NotUtf8));
}
