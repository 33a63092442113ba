//! Writing shards. Records arrive in dataset order, already encoded (raw pixels or one zstd
//! frame each). A shard's data is streamed to a scratch file while its tables grow in memory;
//! when the shard is full the final file is written as header, tables, padding and data, and
//! hashed on the way.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use vantix_read::format::{Codec, Geometry, ShardHeader, ShardInfo};
use vantix_read::{Error, Result};
use xxhash_rust::xxh3::Xxh3;

/// File name of shard `k`.
pub fn shard_name(k: usize) -> String {
    format!("shard-{k:05}.vxs")
}

pub struct ShardWriter {
    dir: PathBuf,
    geometry: Geometry,
    codec: Codec,
    shard_size: u64,
    /// Number of the first shard file this writer creates (`shard_name`).
    first_shard: usize,
    next_index: u64,
    shards: Vec<ShardInfo>,
    current: Option<OpenShard>,
}

struct OpenShard {
    scratch_path: PathBuf,
    scratch: BufWriter<File>,
    first_index: u64,
    data_len: u64,
    labels: Vec<u32>,
    crcs: Vec<u32>,
    offsets: Vec<u64>,
}

fn write_all(w: &mut impl Write, bytes: &[u8], path: &Path) -> Result<()> {
    w.write_all(bytes).map_err(|e| Error::io(path, e))
}

impl ShardWriter {
    /// `shard_size`: target bytes of data per shard (a shard holds at least one record).
    pub fn new(dir: &Path, geometry: Geometry, codec: Codec, shard_size: u64) -> Self {
        ShardWriter {
            dir: dir.to_path_buf(),
            geometry,
            codec,
            shard_size: shard_size.max(1),
            first_shard: 0,
            next_index: 0,
            shards: Vec::new(),
            current: None,
        }
    }

    /// Continue a dataset: the first shard written is `shard_name(first_shard)` and its first
    /// record has the global index `first_index` (`vantix-pack append`).
    pub fn starting_at(mut self, first_shard: usize, first_index: u64) -> Self {
        self.first_shard = first_shard;
        self.next_index = first_index;
        self
    }

    /// Append one encoded record with its label.
    pub fn push(&mut self, stored: &[u8], label: u32) -> Result<()> {
        let padded = match self.codec {
            Codec::Raw => {
                debug_assert_eq!(stored.len(), self.geometry.record_bytes());
                self.geometry.raw_stride()
            }
            Codec::Zstd { .. } => stored.len() as u64,
        };
        let full = self
            .current
            .as_ref()
            .is_some_and(|c| !c.labels.is_empty() && c.data_len + padded > self.shard_size);
        if full {
            self.finish_shard()?;
        }
        if self.current.is_none() {
            let scratch_path = self.dir.join(format!(
                "{}.data",
                shard_name(self.first_shard + self.shards.len())
            ));
            let f = File::create(&scratch_path).map_err(|e| Error::io(&scratch_path, e))?;
            self.current = Some(OpenShard {
                scratch: BufWriter::with_capacity(1 << 20, f),
                scratch_path,
                first_index: self.next_index,
                data_len: 0,
                labels: Vec::new(),
                crcs: Vec::new(),
                offsets: vec![0],
            });
        }
        let cur = self.current.as_mut().unwrap();
        write_all(&mut cur.scratch, stored, &cur.scratch_path)?;
        let pad = padded - stored.len() as u64;
        if pad > 0 {
            write_all(
                &mut cur.scratch,
                &vec![0u8; pad as usize],
                &cur.scratch_path,
            )?;
        }
        cur.data_len += padded;
        cur.labels.push(label);
        cur.crcs.push(crc32fast::hash(stored));
        cur.offsets.push(cur.data_len);
        self.next_index += 1;
        Ok(())
    }

    fn finish_shard(&mut self) -> Result<()> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let OpenShard {
            scratch_path,
            scratch,
            first_index,
            data_len,
            labels,
            crcs,
            offsets,
        } = cur;
        let scratch = scratch
            .into_inner()
            .map_err(|e| Error::io(&scratch_path, e.into_error()))?;
        drop(scratch);
        let n = labels.len() as u64;
        let header = ShardHeader::layout(self.geometry, self.codec, n, data_len, first_index);
        let name = shard_name(self.first_shard + self.shards.len());
        let path = self.dir.join(&name);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut hash = Xxh3::new();
        let mut emit = |bytes: &[u8], out: &mut BufWriter<File>| -> Result<()> {
            hash.update(bytes);
            write_all(out, bytes, &path)
        };
        let mut tables = Vec::with_capacity((header.data_offset as usize).max(128));
        tables.extend_from_slice(&header.encode());
        labels
            .iter()
            .for_each(|l| tables.extend_from_slice(&l.to_le_bytes()));
        crcs.iter()
            .for_each(|c| tables.extend_from_slice(&c.to_le_bytes()));
        if header.offsets_offset != 0 {
            offsets
                .iter()
                .for_each(|o| tables.extend_from_slice(&o.to_le_bytes()));
        }
        tables.resize(header.data_offset as usize, 0);
        emit(&tables, &mut out)?;
        let mut src = File::open(&scratch_path).map_err(|e| Error::io(&scratch_path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = src
                .read(&mut buf)
                .map_err(|e| Error::io(&scratch_path, e))?;
            if k == 0 {
                break;
            }
            emit(&buf[..k], &mut out)?;
        }
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        std::fs::remove_file(&scratch_path).map_err(|e| Error::io(&scratch_path, e))?;
        self.shards.push(ShardInfo {
            file: name,
            num_records: n,
            size_bytes: header.file_size(),
            xxh3: format!("{:016x}", hash.digest()),
        });
        Ok(())
    }

    /// Close the last shard and return the description of every shard written.
    pub fn finish(mut self) -> Result<Vec<ShardInfo>> {
        self.finish_shard()?;
        Ok(std::mem::take(&mut self.shards))
    }
}
