//! Virtual organisations: their ed25519 keys, and [`Seal`]s, the signed statements that
//! bind an image name `vo/name:tag` to a manifest.
//!
//! A seal says "VO `vo` publishes manifest M as `vo/name:tag`, public or private". It is
//! signed with the VO's key, so any host holding the VO's public key (from the cluster
//! config) can check that a manifest it was sent is the one the VO published, and
//! whether other VOs may deploy it. The signed bytes are a domain-separated canonical
//! encoding (magic, version, fields), never the Rust value, so they cannot be confused
//! with another signed message (a deployment ticket has its own magic).
//!
//! ```text
//! seal      = magic "VWSL" | version:u8 (1) | postcard(name, manifest, visibility) | signature:64
//! key file  = magic "VWVK" | version:u8 (1) | postcard(vo, seed:32) | blake3(previous)[..8]
//! ```

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, ImageName, ManifestId};

/// Largest encoded seal accepted (a name is at most 200 bytes).
pub const MAX_SEAL: usize = 1024;
const SEAL_MAGIC: [u8; 4] = *b"VWSL";
pub(crate) const SEAL_VERSION: u8 = 1;
const KEY_MAGIC: [u8; 4] = *b"VWVK";
pub(crate) const KEY_VERSION: u8 = 1;
/// Largest key file read.
const MAX_KEY_FILE: u64 = 4096;

/// The signed bytes of a message: `magic | version | postcard(body)`. Every signed
/// message of vw (a seal, a deployment ticket) has its own magic, so none can stand for
/// another.
pub fn envelope<T: Serialize>(magic: [u8; 4], version: u8, body: &T) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.push(version);
    postcard::to_io(body, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Opens untrusted `envelope | signature` bytes (a `what`): at most `max` bytes, the
/// magic and version checked, the body decoded with nothing trailing, and the whole in
/// canonical form (it encodes back to the same bytes). The signature is the caller's to
/// verify.
pub fn open<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    magic: [u8; 4],
    version: u8,
    max: usize,
    what: &str,
) -> Result<(T, [u8; 64]), String> {
    if bytes.len() > max {
        return Err(format!("{} bytes (at most {max})", bytes.len()));
    }
    if bytes.len() < 5 + 64 || bytes[..4] != magic {
        return Err(format!("not a {what}"));
    }
    if bytes[4] != version {
        return Err(format!("{what} version {}, this build reads {version}", bytes[4]));
    }
    let (body, signature) = bytes[5..].split_at(bytes.len() - 5 - 64);
    let body: T = match postcard::take_from_bytes(body) {
        Ok((b, [])) => b,
        Ok((_, rest)) => return Err(format!("{} trailing bytes", rest.len())),
        Err(e) => return Err(e.to_string()),
    };
    if envelope(magic, version, &body) != bytes[..bytes.len() - 64] {
        return Err("not in canonical form".into());
    }
    Ok((body, signature.try_into().expect("64 bytes split off")))
}

/// Checks a VO name: the rules of the VO part of an image name.
pub fn check_vo(vo: &str) -> Result<(), Error> {
    format!("{vo}/x").parse::<ImageName>().map(|_| ()).map_err(|e| match e {
        Error::BadName { reason, .. } => Error::BadName { input: vo.to_owned(), reason },
        other => other,
    })
}

/// A VO's signing key (secret). Written to its file with mode 0600.
pub struct VoKey {
    vo: String,
    key: SigningKey,
}

impl fmt::Debug for VoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VoKey({}, {})", self.vo, self.public())
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    vo: String,
    seed: [u8; 32],
}

impl VoKey {
    /// A new key for `vo`, from the OS's random source.
    pub fn generate(vo: &str) -> Result<Self, Error> {
        check_vo(vo)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Io {
            op: "read random bytes for",
            path: format!("a key for VO {vo}").into(),
            error: std::io::Error::other(e.to_string()),
        })?;
        Self::from_seed(vo, seed)
    }

    /// The key of `vo` whose secret is `seed` (the golden tests' fixed keys; a key
    /// kept elsewhere).
    pub fn from_seed(vo: &str, seed: [u8; 32]) -> Result<Self, Error> {
        check_vo(vo)?;
        Ok(VoKey { vo: vo.to_owned(), key: SigningKey::from_bytes(&seed) })
    }

    /// The VO this key belongs to.
    pub fn vo(&self) -> &str {
        &self.vo
    }

    /// The public half.
    pub fn public(&self) -> VoPublic {
        VoPublic(self.key.verifying_key())
    }

    /// Whether this key may seal `name`: only names under its own VO.
    pub fn may_sign(&self, name: &ImageName) -> Result<(), Error> {
        if name.vo() == self.vo {
            return Ok(());
        }
        Err(Error::BadName {
            input: name.to_string(),
            reason: format!("the key is VO {}'s; sign names under {}/", self.vo, self.vo),
        })
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Writes the key to `path`, which must not exist, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |op, error| Error::Io { op, path: path.to_owned(), error };
        let mut bytes = KEY_MAGIC.to_vec();
        bytes.push(KEY_VERSION);
        let file = KeyFile { vo: self.vo.clone(), seed: self.key.to_bytes() };
        postcard::to_io(&file, &mut bytes).expect("writing to a Vec cannot fail");
        let check = blake3::hash(&bytes);
        bytes.extend_from_slice(&check.as_bytes()[..8]);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("create", e))?;
        f.write_all(&bytes).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))
    }

    /// Reads a key written by [`VoKey::save`]. Refuses a file others may read.
    pub fn load(path: &Path) -> Result<Self, Error> {
        use std::io::Read as _;
        use std::os::unix::fs::PermissionsExt as _;
        let bad = |reason: String| Error::BadKey { path: path.to_owned(), reason };
        let f = std::fs::File::open(path).map_err(|error| Error::Io {
            op: "open",
            path: path.to_owned(),
            error,
        })?;
        let mode = f
            .metadata()
            .map_err(|error| Error::Io { op: "read", path: path.to_owned(), error })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "its mode is {:o}; a VO key must be readable by its owner only (chmod 600)",
                mode & 0o777
            )));
        }
        let mut bytes = Vec::new();
        f.take(MAX_KEY_FILE).read_to_end(&mut bytes).map_err(|error| Error::Io {
            op: "read",
            path: path.to_owned(),
            error,
        })?;
        let body = bytes.len().checked_sub(8).map(|n| &bytes[..n]).unwrap_or_default();
        if bytes.len() < 13 || bytes[..4] != KEY_MAGIC {
            return Err(bad("not a vw VO key file".into()));
        }
        if bytes[4] != KEY_VERSION {
            return Err(bad(format!("key file version {}, this build reads 1", bytes[4])));
        }
        if blake3::hash(body).as_bytes()[..8] != bytes[body.len()..] {
            return Err(bad("its checksum does not match: the file is damaged".into()));
        }
        let file: KeyFile = match postcard::take_from_bytes(&body[5..]) {
            Ok((file, [])) => file,
            _ => return Err(bad("its body is malformed".into())),
        };
        check_vo(&file.vo)?;
        Ok(VoKey { vo: file.vo, key: SigningKey::from_bytes(&file.seed) })
    }
}

/// A VO's public key. Written `ed25519:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VoPublic(VerifyingKey);

impl VoPublic {
    /// Whether `signature` is this key's over `message` (strict verification: no
    /// malleable or small-order forms).
    pub fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0.verify_strict(message, &Signature::from_bytes(signature)).is_ok()
    }
}

impl fmt::Display for VoPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ed25519:")?;
        self.0.as_bytes().iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for VoPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VoPublic({self})")
    }
}

impl FromStr for VoPublic {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s
            .strip_prefix("ed25519:")
            .ok_or_else(|| "a VO key is `ed25519:` and 64 hex digits".to_owned())?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a VO key is `ed25519:` and 64 hex digits".into());
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        VerifyingKey::from_bytes(&bytes)
            .map(VoPublic)
            .map_err(|_| "not a valid ed25519 public key".into())
    }
}

/// Who may deploy an image besides its VO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only its own VO.
    #[default]
    Private,
    /// Any VO the cluster trusts (a shared base OS).
    Public,
}

impl fmt::Display for Visibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Visibility::Private => "private",
            Visibility::Public => "public",
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Statement {
    name: ImageName,
    manifest: ManifestId,
    visibility: Visibility,
}

/// A VO's signed statement that `name` is manifest `manifest`, with its visibility.
/// Decoding checks only the form; [`Seal::verify`] checks the signature against the
/// VO's key.
#[derive(Clone, PartialEq, Eq)]
pub struct Seal {
    name: ImageName,
    manifest: ManifestId,
    visibility: Visibility,
    signature: [u8; 64],
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seal({} = {}, {})", self.name, self.manifest, self.visibility)
    }
}

impl Seal {
    /// `key`'s seal on `manifest` as `name`; `name` must be in the key's VO.
    pub fn sign(
        key: &VoKey,
        name: &ImageName,
        manifest: ManifestId,
        visibility: Visibility,
    ) -> Result<Self, Error> {
        key.may_sign(name)?;
        let mut seal = Seal { name: name.clone(), manifest, visibility, signature: [0; 64] };
        seal.signature = key.sign(&seal.statement());
        Ok(seal)
    }

    /// The image name.
    pub fn name(&self) -> &ImageName {
        &self.name
    }

    /// The VO that signed it.
    pub fn vo(&self) -> &str {
        self.name.vo()
    }

    /// The manifest it names.
    pub fn manifest(&self) -> ManifestId {
        self.manifest
    }

    /// Public or private.
    pub fn visibility(&self) -> Visibility {
        self.visibility
    }

    /// The signed bytes.
    fn statement(&self) -> Vec<u8> {
        let statement = Statement {
            name: self.name.clone(),
            manifest: self.manifest,
            visibility: self.visibility,
        };
        envelope(SEAL_MAGIC, SEAL_VERSION, &statement)
    }

    /// Checks the signature against the VO's key.
    pub fn verify(&self, key: &VoPublic) -> Result<(), Error> {
        if key.verifies(&self.statement(), &self.signature) {
            Ok(())
        } else {
            Err(Error::BadSeal {
                name: self.name.to_string(),
                reason: format!(
                    "its signature does not verify with VO {}'s key: the seal or the manifest was altered, or another key signed it",
                    self.vo()
                ),
            })
        }
    }

    /// The canonical encoding: the statement, then the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.statement();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes an encoded seal (untrusted bytes: bounded, canonical, nothing trailing).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let (statement, signature): (Statement, _) =
            open(bytes, SEAL_MAGIC, SEAL_VERSION, MAX_SEAL, "seal")
                .map_err(|reason| Error::BadSeal { name: "(undecoded)".into(), reason })?;
        // The name was parsed field by field by serde: check it as text too.
        let name: ImageName = statement.name.to_string().parse()?;
        Ok(Seal { name, manifest: statement.manifest, visibility: statement.visibility, signature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: &[u8]) -> ManifestId {
        ManifestId::from(blake3::hash(b))
    }

    #[test]
    fn a_seal_verifies_with_its_key_only() {
        let a = VoKey::generate("grid3").expect("key");
        let b = VoKey::generate("grid3").expect("key");
        let name: ImageName = "grid3/worker:1".parse().expect("name");
        let seal = Seal::sign(&a, &name, id(b"m"), Visibility::Private).expect("sign");
        seal.verify(&a.public()).expect("verifies");
        let err = seal.verify(&b.public()).expect_err("other key").to_string();
        assert!(err.contains("grid3/worker:1") && err.contains("does not verify"), "{err}");
        let back = Seal::decode(&seal.encode()).expect("decode");
        assert_eq!(back, seal);
        // Another VO's name cannot be signed with this key.
        let other: ImageName = "atlas/worker:1".parse().expect("name");
        assert!(Seal::sign(&a, &other, id(b"m"), Visibility::Public).is_err());
    }

    #[test]
    fn any_altered_byte_breaks_a_seal() {
        let key = VoKey::generate("vo").expect("key");
        let name: ImageName = "vo/base:1".parse().expect("name");
        let bytes = Seal::sign(&key, &name, id(b"m"), Visibility::Private).expect("sign").encode();
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x01;
            let verified = Seal::decode(&altered).and_then(|s| s.verify(&key.public()));
            assert!(verified.is_err(), "byte {i} altered and still accepted");
        }
    }

    #[test]
    fn keys_round_trip_through_files_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grid3.key");
        let key = VoKey::generate("grid3").expect("key");
        key.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = VoKey::load(&path).expect("load");
        assert_eq!((back.vo(), back.public()), ("grid3", key.public()));
        assert!(key.save(&path).is_err(), "never overwritten");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = VoKey::load(&path).expect_err("readable by others").to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[10] ^= 1;
        std::fs::write(&path, bytes).expect("write");
        let err = VoKey::load(&path).expect_err("damaged").to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn public_keys_parse_back_and_bad_ones_say_why() {
        let key = VoKey::generate("vo").expect("key").public();
        assert_eq!(key.to_string().parse::<VoPublic>(), Ok(key));
        assert!("ed25519:zz".parse::<VoPublic>().is_err());
        assert!(key.to_string().replace("ed25519", "rsa").parse::<VoPublic>().is_err());
    }
}
