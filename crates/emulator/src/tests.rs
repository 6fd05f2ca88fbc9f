use super::*;

#[test]
fn form_decoding_handles_escapes() {
    let f = form_urlencoded("scope=https%3A%2F%2Fvault.azure.net%2F.default&a=b+c&empty=");
    assert_eq!(f["scope"], "https://vault.azure.net/.default");
    assert_eq!(f["a"], "b c");
    assert_eq!(f["empty"], "");
}
