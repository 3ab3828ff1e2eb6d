//! A tiny, bounds-checked binary codec used for both RDB records and AOF-rewrite records.

pub struct W {
    pub buf: Vec<u8>,
}

impl W {
    pub fn new(kind: u8) -> W {
        let mut buf = Vec::with_capacity(64);
        buf.push(kind);
        W { buf }
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.u64(v as u64)
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }
    pub fn opt(&mut self, b: Option<&[u8]>) -> &mut Self {
        match b {
            Some(b) => {
                self.buf.push(1);
                self.bytes(b)
            }
            None => {
                self.buf.push(0);
                self
            }
        }
    }
}

pub struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

pub type CResult<T> = Result<T, &'static str>;

impl<'a> R<'a> {
    pub fn new(b: &'a [u8]) -> R<'a> {
        R { b, pos: 0 }
    }
    pub fn u8(&mut self) -> CResult<u8> {
        let v = *self.b.get(self.pos).ok_or("truncated record")?;
        self.pos += 1;
        Ok(v)
    }
    pub fn u64(&mut self) -> CResult<u64> {
        let s = self.b.get(self.pos..self.pos + 8).ok_or("truncated record")?;
        self.pos += 8;
        Ok(u64::from_le_bytes(s.try_into().map_err(|_| "truncated record")?))
    }
    pub fn i64(&mut self) -> CResult<i64> {
        Ok(self.u64()? as i64)
    }
    pub fn bytes(&mut self) -> CResult<Vec<u8>> {
        let n = self.u64()?;
        if n > (self.b.len() - self.pos) as u64 {
            return Err("truncated record");
        }
        let n = n as usize;
        let v = self.b[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(v)
    }
    pub fn opt(&mut self) -> CResult<Option<Vec<u8>>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err("bad option tag"),
        }
    }
    pub fn done(&self) -> CResult<()> {
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err("trailing bytes in record")
        }
    }
}
