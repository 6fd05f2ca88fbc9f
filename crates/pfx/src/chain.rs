//! Chain order for `--construct-pem-chain` (the upstream Azure provider's `fetchCertChains`), keeping every certificate.
//!
//! Links are upstream's: certificate `j` is the parent of `i` when `i`'s Authority Key Identifier
//! equals `j`'s Subject Key Identifier, the first such `j` in stored order winning. Where upstream
//! falls back to stored order for an incomplete chain and fails on `no leaf found` or a cycle, this
//! writes the leaf's chain first and every other certificate after it in stored order, so a
//! cross-signed intermediate or an extra CA never costs the leaf its place or the chain its root.

use x509_parser::extensions::{BasicConstraints, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{CertEntry, Error};

struct Node {
    aki: Option<Vec<u8>>,
    ski: Option<Vec<u8>>,
    is_ca: bool,
}

fn node(index: usize, der: &[u8]) -> Result<Node, Error> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::Certificate { index, reason: e.to_string() })?;
    let mut n = Node { aki: None, ski: None, is_ca: false };
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => n.aki = a.key_identifier.as_ref().map(|k| k.0.to_vec()),
            ParsedExtension::SubjectKeyIdentifier(k) => n.ski = Some(k.0.to_vec()),
            ParsedExtension::BasicConstraints(BasicConstraints { ca, .. }) => n.is_ca = *ca,
            _ => {}
        }
    }
    Ok(n)
}

/// Indices of `certs` in output order: the leaf, its issuers up to the root, then the rest in stored
/// order. `key_ids` are the `localKeyId`s of the PFX's keys; a certificate carrying one is the leaf.
pub fn order(certs: &[CertEntry], key_ids: &[&[u8]]) -> Result<Vec<usize>, Error> {
    let n = certs.len();
    if n < 2 {
        return Ok((0..n).collect());
    }
    let nodes = certs.iter().enumerate().map(|(i, c)| node(i, &c.der)).collect::<Result<Vec<_>, _>>()?;
    let parent: Vec<Option<usize>> = (0..n)
        .map(|i| {
            let aki = nodes[i].aki.as_ref()?;
            (0..n).find(|&j| j != i && nodes[j].ski.as_ref() == Some(aki))
        })
        .collect();
    let is_parent: Vec<bool> = (0..n).map(|j| parent.contains(&Some(j))).collect();
    let candidates: Vec<usize> = (0..n).filter(|&i| !is_parent[i]).collect();
    let owns_key = |i: &usize| certs[*i].local_key_id.as_deref().is_some_and(|id| key_ids.contains(&id));
    // The key's own certificate first; else an end-entity certificate; else upstream's choice, the
    // first certificate nobody names as issuer.
    let leaf = candidates
        .iter()
        .find(|i| owns_key(i))
        .or_else(|| candidates.iter().find(|&&i| !nodes[i].is_ca))
        .or_else(|| candidates.first())
        .copied();
    let Some(leaf) = leaf else {
        // Every certificate issues another (certificates cross-signing each other): no leaf to start
        // from. Upstream fails the mount with `no leaf found`; stored order loses nothing.
        tracing::warn!(certificates = n, "no leaf certificate in the PFX; keeping the stored order");
        return Ok((0..n).collect());
    };
    let mut out = vec![leaf];
    let mut visited = vec![false; n];
    visited[leaf] = true;
    let mut cur = leaf;
    while let Some(p) = parent[cur] {
        if visited[p] {
            break; // a cycle: the walk ends where it would repeat itself
        }
        visited[p] = true;
        out.push(p);
        cur = p;
    }
    if out.len() < n {
        tracing::info!(
            chained = out.len(),
            total = n,
            "certificates not on the leaf's chain follow it in stored order"
        );
    }
    out.extend((0..n).filter(|&i| !visited[i]));
    Ok(out)
}
